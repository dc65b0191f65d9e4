package chaos

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// ResetConnections destroys every established TCP connection of process
// pid (its sockets, found through /proc/<pid>/fd, matched by inode with
// /proc/<pid>/net/tcp{,6}) with the kernel's socket destroy (`ss -K`,
// needs CONFIG_INET_DIAG_DESTROY and CAP_NET_ADMIN): the process's end is
// aborted (ECONNABORTED) and the peer gets a reset, as when a middlebox
// resets a connection. It returns how many connections it reset.
func ResetConnections(ctx context.Context, pid int) (int, error) {
	if pid <= 0 {
		return 0, fmt.Errorf("no process")
	}
	inodes := map[string]bool{}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return 0, err
	}
	for _, fd := range fds {
		l, err := os.Readlink(filepath.Join(fmt.Sprintf("/proc/%d/fd", pid), fd.Name()))
		if err == nil && strings.HasPrefix(l, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	var ports []int
	for _, f := range []string{"tcp", "tcp6"} {
		ports = append(ports, established(fmt.Sprintf("/proc/%d/net/%s", pid, f), inodes)...)
	}
	n := 0
	var firstErr error
	for _, p := range ports {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		out, err := exec.CommandContext(cctx, "ss", "-K", "-tn", "state", "established", "sport", "=", ":"+strconv.Itoa(p)).CombinedOutput()
		cancel()
		if err != nil {
			if firstErr == nil {
				firstErr = fmt.Errorf("ss -K sport %d: %v: %s", p, err, out)
			}
			continue
		}
		n++
	}
	return n, firstErr
}

// established returns the local ports of the established connections in a
// /proc/net/tcp file whose socket inode is in inodes.
func established(path string, inodes map[string]bool) []int {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []int
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		// sl local rem st tx:rx tr:when retrnsmt uid timeout inode
		if len(fs) < 10 || fs[3] != "01" || !inodes[fs[9]] {
			continue
		}
		_, port, ok := strings.Cut(fs[1], ":")
		if !ok {
			continue
		}
		if p, err := strconv.ParseInt(port, 16, 32); err == nil {
			out = append(out, int(p))
		}
	}
	return out
}
