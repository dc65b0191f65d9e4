package chaos

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
)

// Disks gives every server slot a real file system of its own for its data
// directory — an ext4 image, loop-mounted — so that the disk-full fault can
// fill one node's disk for real (ENOSPC from the kernel on that node's log
// store, stable store and snapshots) without touching the others. Needs
// root, mkfs.ext4 and loop devices; the run says so when they are missing.
type Disks struct {
	imgs   []string
	loops  []string // loop devices, detached by Close
	mounts []string
	sizeMB int

	throttles map[int]*throttle // slow-disk cgroups by slot (slowdisk.go)
}

// DiskSizeMB is the size of each node's file system: roomy for a run (a
// 30-minute soak writes a few hundred MB of log and snapshots at most), and
// sparse, so it costs only what is written.
const DiskSizeMB = 2048

// fillerName is the file the fault fills a disk with.
const fillerName = ".chaos-disk-filler"

// NewDisks makes and mounts one file system per data directory (mounted
// over the directory, which must exist and be empty). On error, everything
// already mounted is unmounted.
func NewDisks(ctx context.Context, dir string, dataDirs []string, sizeMB int) (*Disks, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("disk faults need root (loop-mounted file systems)")
	}
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		return nil, fmt.Errorf("disk faults need mkfs.ext4 (Debian: e2fsprogs): %w", err)
	}
	d := &Disks{sizeMB: sizeMB}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	for i, data := range dataDirs {
		img := filepath.Join(dir, fmt.Sprintf("disk%d.img", i+1))
		if err := os.Truncate(img, 0); err != nil && !errors.Is(err, os.ErrNotExist) {
			d.Close()
			return nil, err
		}
		f, err := os.Create(img)
		if err == nil {
			err = f.Truncate(int64(d.sizeMB) << 20)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
		if err != nil {
			d.Close()
			return nil, err
		}
		// -m 0: no blocks reserved for root (the server runs as root, and a
		// reserve would leave it room after the "disk full").
		if out, err := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-m", "0", img).CombinedOutput(); err != nil {
			d.Close()
			return nil, fmt.Errorf("mkfs.ext4 %s: %v: %s", img, err, strings.TrimSpace(string(out)))
		}
		// An explicit loop device (mount -o loop does not always detach it
		// on umount here, and loop devices are a shared resource).
		out, err := exec.CommandContext(ctx, "losetup", "-f", "--show", img).CombinedOutput()
		if err != nil {
			d.Close()
			return nil, fmt.Errorf("losetup %s: %v: %s", img, err, strings.TrimSpace(string(out)))
		}
		loop := strings.TrimSpace(string(out))
		d.imgs = append(d.imgs, img)
		d.loops = append(d.loops, loop)
		if out, err := exec.CommandContext(ctx, "mount", loop, data).CombinedOutput(); err != nil {
			d.Close()
			return nil, fmt.Errorf("mount %s (%s) on %s: %v: %s", loop, img, data, err, strings.TrimSpace(string(out)))
		}
		d.mounts = append(d.mounts, data)
	}
	return d, nil
}

// Fill takes every free block of slot i's file system (1-based) and
// returns how many bytes it took.
func (d *Disks) Fill(i int) (int64, error) {
	mnt := d.mounts[i-1]
	var st syscall.Statfs_t
	if err := syscall.Statfs(mnt, &st); err != nil {
		return 0, err
	}
	free := int64(st.Bavail) * int64(st.Bsize)
	f, err := os.OpenFile(filepath.Join(mnt, fillerName), os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	// fallocate what statfs reports, then top up block by block: the
	// file's own extent metadata takes some of it.
	var took int64
	if free > 0 {
		if err := syscall.Fallocate(int(f.Fd()), 0, 0, free); err != nil && !errors.Is(err, syscall.ENOSPC) {
			return 0, fmt.Errorf("fallocate: %w", err)
		}
	}
	if fi, err := f.Stat(); err == nil {
		took = fi.Size()
	}
	block := make([]byte, 4096)
	for {
		n, err := f.WriteAt(block, took)
		took += int64(n)
		if err != nil {
			if errors.Is(err, syscall.ENOSPC) {
				break
			}
			return took, err
		}
	}
	if err := f.Sync(); err != nil && !errors.Is(err, syscall.ENOSPC) {
		return took, err
	}
	return took, nil
}

// Free removes the filler of slot i.
func (d *Disks) Free(i int) error {
	err := os.Remove(filepath.Join(d.mounts[i-1], fillerName))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// Close unmounts every file system (the processes using them must have
// stopped). The images stay in the run directory for post-mortems
// (mount -o loop IMAGE DIR).
func (d *Disks) Close() {
	d.closeThrottles()
	for _, m := range d.mounts {
		if out, err := exec.Command("umount", m).CombinedOutput(); err != nil {
			// A straggler still holds it: detach lazily rather than leak the mount.
			if out2, err2 := exec.Command("umount", "-l", m).CombinedOutput(); err2 != nil {
				fmt.Fprintf(os.Stderr, "chaos: umount %s: %v: %s; %s\n", m, err, out, out2)
			}
		}
	}
	for _, l := range d.loops {
		if out, err := exec.Command("losetup", "-d", l).CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "chaos: losetup -d %s: %v: %s\n", l, err, out)
		}
	}
	d.mounts, d.loops, d.imgs = nil, nil, nil
}
