package chaos

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
)

// The disk-full fault's file systems are real: once filled, a write on
// that node's data directory fails with ENOSPC, and after Free it works.
func TestDisksFillAndFree(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (loop mounts)")
	}
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		t.Skip("needs mkfs.ext4")
	}
	dir := t.TempDir()
	data := []string{filepath.Join(dir, "n1"), filepath.Join(dir, "n2")}
	for _, d := range data {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	disks, err := NewDisks(context.Background(), filepath.Join(dir, "disks"), data, 32)
	if err != nil {
		t.Skipf("loop mounts unavailable here: %v", err)
	}
	defer disks.Close()
	write := func(d string) error {
		f, err := os.Create(filepath.Join(d, "probe"))
		if err != nil {
			return err
		}
		defer f.Close()
		if _, err := f.Write(make([]byte, 64<<10)); err != nil {
			return err
		}
		return f.Sync()
	}
	took, err := disks.Fill(1)
	if err != nil {
		t.Fatal(err)
	}
	if took < 16<<20 {
		t.Fatalf("filled only %d bytes of a 32 MiB file system", took)
	}
	if err := write(data[0]); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("write on the full disk: %v, want ENOSPC", err)
	}
	if err := write(data[1]); err != nil {
		t.Fatalf("the other node's disk is affected: %v", err)
	}
	if err := disks.Free(1); err != nil {
		t.Fatal(err)
	}
	if err := write(data[0]); err != nil {
		t.Fatalf("write after Free: %v", err)
	}
}
