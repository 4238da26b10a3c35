//go:build linux

package fastvm_test

import (
	"context"
	"path/filepath"
	"testing"

	fastvm "github.com/vmcp-dev/vmcp/client/fastvm"
	fastvmemu "github.com/vmcp-dev/vmcp/emulator/fastvm"
)

// BenchmarkExecTrue is the round trip of the smallest command: client →
// HTTP → emulator → local engine → `true` → aggregate JSON back.
func BenchmarkExecTrue(b *testing.B) {
	env := newEmu(b, fastvmemu.Options{})
	vm := env.launch(b, fastvm.LaunchRequest{})
	ctx := context.Background()
	req := fastvm.ExecRequest{Command: []string{"true"}}
	for b.Loop() {
		res, err := env.c.Exec(ctx, vm.ID, req)
		if err != nil || res.ExitCode != 0 {
			b.Fatalf("%+v, %v", res, err)
		}
	}
}

// BenchmarkExecStreamTrue is BenchmarkExecTrue through the NDJSON stream.
func BenchmarkExecStreamTrue(b *testing.B) {
	env := newEmu(b, fastvmemu.Options{})
	vm := env.launch(b, fastvm.LaunchRequest{})
	ctx := context.Background()
	req := fastvm.ExecRequest{Command: []string{"true"}}
	for b.Loop() {
		exit, err := env.c.ExecStreamFunc(ctx, vm.ID, req, func(fastvm.ExecEvent) error { return nil })
		if err != nil || exit.ExitCode != 0 {
			b.Fatalf("%+v, %v", exit, err)
		}
	}
}

// benchFileSize is the file the transfer benchmarks move.
const benchFileSize = 256 << 20

// BenchmarkUpload measures Upload of a large file end to end (presign, PUT,
// fetch into the VM) in MB/s.
func BenchmarkUpload(b *testing.B) {
	env := newEmu(b, fastvmemu.Options{})
	vm := env.launch(b, fastvm.LaunchRequest{})
	src := filepath.Join(b.TempDir(), "bench.bin")
	writeRandomFile(b, src, benchFileSize, 3)
	ctx := context.Background()
	b.SetBytes(benchFileSize)
	for b.Loop() {
		if err := env.c.Upload(ctx, vm.ID, src, "/root/bench.bin"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDownload measures Download of a large file end to end (probe, VM
// curl to storage, GET) in MB/s.
func BenchmarkDownload(b *testing.B) {
	env := newEmu(b, fastvmemu.Options{})
	vm := env.launch(b, fastvm.LaunchRequest{})
	ctx := context.Background()
	res, err := env.c.Exec(ctx, vm.ID, fastvm.ExecRequest{Command: fastvm.Shell("head -c 268435456 /dev/urandom > /root/bench.bin")})
	if err != nil || res.ExitCode != 0 {
		b.Fatalf("%+v, %v", res, err)
	}
	dst := filepath.Join(b.TempDir(), "bench.bin")
	b.SetBytes(benchFileSize)
	for b.Loop() {
		if err := env.c.Download(ctx, vm.ID, "/root/bench.bin", dst); err != nil {
			b.Fatal(err)
		}
	}
}
