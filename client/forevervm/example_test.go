//go:build linux

package forevervm_test

import (
	"context"
	"fmt"
	"log"
	"net/http/httptest"
	"os"
	"time"

	"github.com/rs/zerolog"

	"github.com/vmcp-dev/vmcp/client/forevervm"
	forevervmemu "github.com/vmcp-dev/vmcp/emulator/forevervm"
	"github.com/vmcp-dev/vmcp/local"
)

// The example runs against the ForeverVM emulator on loopback; against the
// real service, use forevervm.NewFromEnv() with FOREVERVM_TOKEN set instead.
func Example() {
	dir, _ := os.MkdirTemp("", "forevervm-example-")
	defer os.RemoveAll(dir)
	engine, err := local.New(local.Options{StateDir: dir})
	if err != nil {
		log.Fatal(err)
	}
	defer engine.Close()
	emu, err := forevervmemu.New(forevervmemu.Options{Engine: engine, Token: "demo.secret", Account: "demo", Logger: zerolog.Nop()})
	if err != nil {
		log.Fatal(err)
	}
	defer emu.Close()
	srv := httptest.NewServer(emu)
	defer srv.Close()

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := forevervm.New("demo.secret", forevervm.WithBaseURL(srv.URL))

	machine, err := c.CreateMachine(ctx, forevervm.CreateMachineOptions{Tags: map[string]string{"project": "demo"}})
	if err != nil {
		log.Fatal(err)
	}
	repl, err := c.REPL(ctx, machine)
	if err != nil {
		log.Fatal(err)
	}
	defer repl.Close()

	res, err := repl.Exec(ctx, "for i in range(3):\n    print(i)\nx = 41\nx + 1", forevervm.ExecOptions{
		OnOutput: func(ch forevervm.OutputChunk) { fmt.Printf("%s %d: %s\n", ch.Stream, ch.Seq, ch.Data) },
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("value:", *res.Value)

	// Python exceptions are results, not Go errors.
	res, _ = repl.Exec(ctx, "1 / 0", forevervm.ExecOptions{})
	fmt.Println("error result:", res.IsError)

	// Globals persist, and HTTP sees the same machine.
	sub, _ := c.Exec(ctx, machine, "x * 2", forevervm.ExecOptions{Timeout: 5 * time.Second})
	res, _ = c.ExecResult(ctx, machine, *sub.InstructionSeq)
	fmt.Println("over HTTP:", *res.Value)

	// Output:
	// stdout 0: 0
	// stdout 1: 1
	// stdout 2: 2
	// value: 42
	// error result: true
	// over HTTP: 82
}
