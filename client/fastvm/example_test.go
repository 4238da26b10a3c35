//go:build linux

package fastvm_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strings"

	fastvm "github.com/vmcp-dev/vmcp/client/fastvm"
)

// These examples run for real in `go test`: TestMain points FASTVM_API_KEY and
// FASTVM_BASE_URL at a FastVM emulator on loopback.

// Launch a VM, run a command in it, delete it.
func Example() {
	ctx := context.Background()
	c, err := fastvm.NewFromEnv()
	if err != nil {
		log.Fatal(err)
	}
	vm, err := c.Launch(ctx, fastvm.LaunchRequest{MachineType: "c1m2", Name: "example"})
	if err != nil {
		log.Fatal(err)
	}
	defer c.DeleteVM(ctx, vm.ID)

	res, err := c.Exec(ctx, vm.ID, fastvm.ExecRequest{Command: []string{"echo", "hello from", "the VM"}})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Print(res.Stdout)
	fmt.Println("exit code:", res.ExitCode)
	// Output:
	// hello from the VM
	// exit code: 0
}

// Stream a command's output as it is produced.
func ExampleClient_ExecStream() {
	ctx := context.Background()
	c, err := fastvm.NewFromEnv()
	if err != nil {
		log.Fatal(err)
	}
	vm, err := c.Launch(ctx, fastvm.LaunchRequest{MachineType: "c1m2"})
	if err != nil {
		log.Fatal(err)
	}
	defer c.DeleteVM(ctx, vm.ID)

	var stdout strings.Builder
	req := fastvm.ExecRequest{Command: fastvm.Shell("for i in 1 2 3; do echo step $i; done; exit 3")}
	for ev, err := range c.ExecStream(ctx, vm.ID, req) {
		if err != nil {
			log.Fatal(err)
		}
		switch ev.Type {
		case fastvm.EventStdout:
			stdout.Write(ev.Data) // chunks, not necessarily whole lines
		case fastvm.EventExit:
			fmt.Print(stdout.String())
			fmt.Println("exit code:", ev.ExitCode, "timed out:", ev.TimedOut)
		}
	}
	// Output:
	// step 1
	// step 2
	// step 3
	// exit code: 3 timed out: false
}

// Copy a directory into a VM, work on it there, copy the result back.
func ExampleClient_Upload() {
	ctx := context.Background()
	c, err := fastvm.NewFromEnv()
	if err != nil {
		log.Fatal(err)
	}
	vm, err := c.Launch(ctx, fastvm.LaunchRequest{MachineType: "c1m2"})
	if err != nil {
		log.Fatal(err)
	}
	defer c.DeleteVM(ctx, vm.ID)

	work, _ := os.MkdirTemp("", "fastvm-example-")
	defer os.RemoveAll(work)
	os.MkdirAll(filepath.Join(work, "project"), 0o755)
	os.WriteFile(filepath.Join(work, "project", "words.txt"), []byte("pear\napple\nfig\n"), 0o644)

	if err := c.Upload(ctx, vm.ID, filepath.Join(work, "project"), "/root/project"); err != nil {
		log.Fatal(err)
	}
	if _, err := c.Exec(ctx, vm.ID, fastvm.ExecRequest{Command: fastvm.Shell("sort /root/project/words.txt > /root/sorted.txt")}); err != nil {
		log.Fatal(err)
	}
	if err := c.Download(ctx, vm.ID, "/root/sorted.txt", filepath.Join(work, "sorted.txt")); err != nil {
		log.Fatal(err)
	}
	out, _ := os.ReadFile(filepath.Join(work, "sorted.txt"))
	fmt.Print(string(out))
	// Output:
	// apple
	// fig
	// pear
}

// Build a snapshot from a Dockerfile and a context directory, then boot it.
func ExampleClient_Build() {
	ctx := context.Background()
	c, err := fastvm.NewFromEnv()
	if err != nil {
		log.Fatal(err)
	}
	dir, _ := os.MkdirTemp("", "fastvm-build-")
	defer os.RemoveAll(dir)
	os.WriteFile(filepath.Join(dir, "greeting"), []byte("built from a context\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte("FROM debian:bookworm\nCOPY greeting /etc/greeting\n"), 0o644)

	snap, err := c.Build(ctx, fastvm.BuildRequest{Name: "greeter"}, dir)
	if err != nil {
		log.Fatal(err)
	}
	defer c.DeleteSnapshot(ctx, snap.ID)
	vm, err := c.Launch(ctx, fastvm.LaunchRequest{SnapshotID: snap.ID})
	if err != nil {
		log.Fatal(err)
	}
	defer c.DeleteVM(ctx, vm.ID)
	res, err := c.Exec(ctx, vm.ID, fastvm.ExecRequest{Command: []string{"cat", "/etc/greeting"}})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(snap.Name, snap.Status)
	fmt.Print(res.Stdout)
	// Output:
	// greeter ready
	// built from a context
}

// Errors are typed: an unknown VM is a 404 *APIError.
func ExampleAPIError() {
	c, err := fastvm.NewFromEnv()
	if err != nil {
		log.Fatal(err)
	}
	_, err = c.GetVM(context.Background(), "vm_does_not_exist")
	fmt.Println(fastvm.IsNotFound(err))
	// Output:
	// true
}
