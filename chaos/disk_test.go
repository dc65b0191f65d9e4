package chaos

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
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

// The slow-disk fault really throttles: a process moved under the limit
// needs at least a second for 40 synchronous 4 KiB writes at 20 write
// IOPS, and Unslow removes the device's limit again.
func TestDisksSlowAndUnslow(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (loop mounts, cgroups)")
	}
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		t.Skip("needs mkfs.ext4")
	}
	if err := CanThrottle(); err != nil {
		t.Skip(err)
	}
	dir := t.TempDir()
	data := filepath.Join(dir, "n1")
	if err := os.MkdirAll(data, 0o755); err != nil {
		t.Fatal(err)
	}
	disks, err := NewDisks(context.Background(), filepath.Join(dir, "disks"), []string{data}, 32)
	if err != nil {
		t.Skipf("loop mounts unavailable here: %v", err)
	}
	defer disks.Close()

	// The writer waits for a line on stdin, so that it is under the limit
	// before its first write.
	cmd := exec.Command("sh", "-c", "read go; dd if=/dev/zero of="+filepath.Join(data, "probe")+" bs=4k count=40 oflag=dsync 2>/dev/null")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if err := disks.Slow(1, cmd.Process.Pid, 20); err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := stdin.Write([]byte("go\n")); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("writer: %v", err)
	}
	if took := time.Since(start); took < time.Second {
		t.Fatalf("40 synchronous writes at 20 write IOPS took %v; the limit is not in effect", took)
	}
	limits := func() string {
		tr := disks.throttles[1]
		name := "blkio.throttle.write_iops_device"
		if tr.v2 {
			name = "io.max"
		}
		b, err := os.ReadFile(filepath.Join(tr.dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	dev := disks.throttles[1].device
	if l := limits(); !strings.Contains(l, dev) {
		t.Fatalf("limits %q do not name %s", l, dev)
	}
	if err := disks.Unslow(1); err != nil {
		t.Fatal(err)
	}
	if l := limits(); strings.Contains(l, dev+" ") && !strings.Contains(l, "wiops=max") {
		t.Fatalf("limit still set after Unslow: %q", l)
	}
}
