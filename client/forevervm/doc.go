// Package forevervm is a Go client for the ForeverVM API: machines that run a
// stateful Python REPL and persist forever (https://forevervm.com).
//
// It speaks the wire protocol of the official SDKs at version 0.1.35 and
// depends on nothing of the vmcp repository, so it can be used on its own.
//
// A Client makes the REST calls: Whoami, CreateMachine, ListMachines, Exec
// (submit an instruction), ExecResult (wait for its result) and StreamResult
// (its output as it is produced, then its result). REPL opens the WebSocket
// REPL of a machine: one long-lived socket that runs many instructions, with
// their output streamed, and that reconnects by itself when it drops.
//
//	c, err := forevervm.NewFromEnv() // FOREVERVM_TOKEN, FOREVERVM_BASE_URL
//	name, err := c.CreateMachine(ctx, forevervm.CreateMachineOptions{})
//	repl, err := c.REPL(ctx, name)
//	defer repl.Close()
//	res, err := repl.Exec(ctx, "x = 41\nx + 1", forevervm.ExecOptions{
//		OnOutput: func(ch forevervm.OutputChunk) { fmt.Println(ch.Data) },
//	})
//	fmt.Println(*res.Value) // 42
//
// Failures of the user's code (an exception, a timeout) are results with
// IsError set, not Go errors; Go errors are for requests that failed, and
// those the server refused are *APIError values (see IsNotFound and
// IsUnauthorized).
//
// The token is sent only in the Authorization header and never appears in
// errors or in the formatted Client.
package forevervm
