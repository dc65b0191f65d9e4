package chaos

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Slow disks: the slow-disk fault throttles one node's file system with the
// kernel's block I/O controller. Each slot's file system is its own loop
// device (Disks), so a write-IOPS limit on that device, applied to the
// server process through a blkio cgroup of its own, slows exactly that
// node's log-store commits and fsyncs — the writes really wait in the
// kernel's throttle queue — and nothing else on the machine. cgroup v1
// (blkio.throttle.write_iops_device) and v2 (io.max) are both supported;
// the run says so when neither is.

// cgroupV1Blkio and cgroupV2Root are where the controllers are mounted.
const (
	cgroupV1Blkio = "/sys/fs/cgroup/blkio"
	cgroupV2Root  = "/sys/fs/cgroup"
)

// throttle is one slot's cgroup and device.
type throttle struct {
	dir    string // the cgroup directory, created by Slow
	device string // "MAJ:MIN" of the slot's loop device
	v2     bool
}

// devNumber returns "MAJ:MIN" of a block device file.
func devNumber(path string) (string, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return "", err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return "", fmt.Errorf("%s is not a block device", path)
	}
	return fmt.Sprintf("%d:%d", unix.Major(uint64(st.Rdev)), unix.Minor(uint64(st.Rdev))), nil
}

// CanThrottle reports whether this machine lets the slow-disk fault limit a
// process's I/O on a device, and if not, why.
func CanThrottle() error {
	if _, err := os.Stat(filepath.Join(cgroupV1Blkio, "blkio.throttle.write_iops_device")); err == nil {
		return nil
	}
	if b, err := os.ReadFile(filepath.Join(cgroupV2Root, "cgroup.controllers")); err == nil && hasWord(string(b), "io") {
		return nil
	}
	return errors.New("no block I/O throttling here (neither cgroup v1 blkio.throttle nor cgroup v2 io.max)")
}

func hasWord(s, w string) bool {
	for _, f := range strings.Fields(s) {
		if f == w {
			return true
		}
	}
	return false
}

// Slow limits the process pid (slot i's server, 1-based) to writeIOPS write
// operations per second on slot i's file system. Call Unslow to lift it; a
// restarted server starts unthrottled.
func (d *Disks) Slow(i, pid, writeIOPS int) error {
	if writeIOPS < 1 {
		return fmt.Errorf("slow disk: %d write IOPS", writeIOPS)
	}
	if err := CanThrottle(); err != nil {
		return err
	}
	t, err := d.throttle(i)
	if err != nil {
		return err
	}
	if t.v2 {
		err = os.WriteFile(filepath.Join(t.dir, "io.max"), []byte(fmt.Sprintf("%s wiops=%d", t.device, writeIOPS)), 0o644)
	} else {
		err = os.WriteFile(filepath.Join(t.dir, "blkio.throttle.write_iops_device"), []byte(fmt.Sprintf("%s %d", t.device, writeIOPS)), 0o644)
	}
	if err != nil {
		return fmt.Errorf("slow disk: set limit: %w", err)
	}
	if err := os.WriteFile(filepath.Join(t.dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644); err != nil {
		return fmt.Errorf("slow disk: move pid %d into %s: %w", pid, t.dir, err)
	}
	return nil
}

// Unslow lifts slot i's limit (the process stays in its cgroup, unlimited).
func (d *Disks) Unslow(i int) error {
	t := d.throttles[i]
	if t == nil {
		return nil
	}
	var err error
	if t.v2 {
		err = os.WriteFile(filepath.Join(t.dir, "io.max"), []byte(t.device+" wiops=max"), 0o644)
	} else {
		err = os.WriteFile(filepath.Join(t.dir, "blkio.throttle.write_iops_device"), []byte(t.device+" 0"), 0o644)
	}
	if err != nil {
		return fmt.Errorf("slow disk: lift limit: %w", err)
	}
	return nil
}

// throttle returns slot i's cgroup, creating it on first use. The cgroup is
// named after the loop device, which no other run holds at the same time.
func (d *Disks) throttle(i int) (*throttle, error) {
	if d.throttles == nil {
		d.throttles = make(map[int]*throttle)
	}
	if t := d.throttles[i]; t != nil {
		return t, nil
	}
	dev, err := devNumber(d.loops[i-1])
	if err != nil {
		return nil, err
	}
	name := "hodei-chaos-" + filepath.Base(d.loops[i-1])
	t := &throttle{device: dev}
	if _, err := os.Stat(filepath.Join(cgroupV1Blkio, "blkio.throttle.write_iops_device")); err == nil {
		t.dir = filepath.Join(cgroupV1Blkio, name)
	} else {
		t.v2 = true
		t.dir = filepath.Join(cgroupV2Root, name)
		// The parent must delegate the io controller to its children.
		_ = os.WriteFile(filepath.Join(cgroupV2Root, "cgroup.subtree_control"), []byte("+io"), 0o644)
	}
	if err := os.Mkdir(t.dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("slow disk: %w", err)
	}
	d.throttles[i] = t
	return t, nil
}

// closeThrottles moves whatever is left in the cgroups back to the root and
// removes them.
func (d *Disks) closeThrottles() {
	for _, t := range d.throttles {
		root := cgroupV1Blkio
		if t.v2 {
			root = cgroupV2Root
		}
		if b, err := os.ReadFile(filepath.Join(t.dir, "cgroup.procs")); err == nil {
			for _, pid := range strings.Fields(string(b)) {
				_ = os.WriteFile(filepath.Join(root, "cgroup.procs"), []byte(pid), 0o644)
			}
		}
		if err := os.Remove(t.dir); err != nil {
			fmt.Fprintf(os.Stderr, "chaos: remove cgroup %s: %v\n", t.dir, err)
		}
	}
	d.throttles = nil
}
