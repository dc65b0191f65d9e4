package chaos

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// Proc is one child process (a server or a worker) in its own process
// group, so that kill and pause reach whatever it spawned. It can be started
// again after it died, with the same command line; output is appended to
// one log file across restarts.
type Proc struct {
	Name    string
	Path    string
	Args    []string
	NetNS   string // run inside this network namespace (via ip netns exec)
	LogPath string
	Env     []string

	mu       sync.Mutex
	cmd      *exec.Cmd
	done     chan struct{} // closed when the current incarnation exits
	paused   bool
	starts   int
	exitCode int
}

// Start starts the process; an error if it is already running.
func (p *Proc) Start() error { return p.StartWith() }

// StartWith starts the process with extra arguments for this incarnation
// only (a later Start uses Args alone).
func (p *Proc) StartWith(extra ...string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	args := append(append([]string(nil), p.Args...), extra...)
	if p.cmd != nil {
		select {
		case <-p.done:
		default:
			return fmt.Errorf("%s: already running", p.Name)
		}
	}
	logf, err := os.OpenFile(p.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	fmt.Fprintf(logf, "\n==== chaos: start #%d at %s: %s %v\n", p.starts+1, time.Now().Format(time.RFC3339Nano), p.Path, args)
	var cmd *exec.Cmd
	if p.NetNS != "" {
		// ip netns exec execs the program itself, so the pid is the server's.
		cmd = exec.Command("ip", append([]string{"netns", "exec", p.NetNS, p.Path}, args...)...)
	} else {
		cmd = exec.Command(p.Path, args...)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), p.Env...)
	// Own process group (kill/pause reach children); die with the harness.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("%s: %w", p.Name, err)
	}
	done := make(chan struct{})
	p.cmd, p.done, p.paused = cmd, done, false
	p.starts++
	// The waiter is owned by the Proc: it ends when the process exits, which
	// Kill guarantees.
	go func() {
		err := cmd.Wait()
		logf.Close()
		p.mu.Lock()
		p.exitCode = 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			p.exitCode = ee.ExitCode()
		}
		p.mu.Unlock()
		close(done)
	}()
	return nil
}

// Running reports whether the current incarnation is alive (maybe paused).
func (p *Proc) Running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// Paused reports whether the process was stopped with SIGSTOP.
func (p *Proc) Paused() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.paused
}

func (p *Proc) signal(sig syscall.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.cmd.Process == nil {
		return fmt.Errorf("%s: not started", p.Name)
	}
	select {
	case <-p.done:
		return fmt.Errorf("%s: not running", p.Name)
	default:
	}
	err := syscall.Kill(-p.cmd.Process.Pid, sig)
	switch sig {
	case syscall.SIGSTOP:
		p.paused = err == nil
	case syscall.SIGCONT:
		if err == nil {
			p.paused = false
		}
	}
	return err
}

// Pause stops the whole process group (SIGSTOP).
func (p *Proc) Pause() error { return p.signal(syscall.SIGSTOP) }

// Resume continues it (SIGCONT).
func (p *Proc) Resume() error { return p.signal(syscall.SIGCONT) }

// Kill sends SIGKILL to the group and waits for the exit (up to 10s).
func (p *Proc) Kill() error {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		return nil
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	select {
	case <-done:
		p.mu.Lock()
		p.paused = false
		p.mu.Unlock()
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("%s: did not exit after SIGKILL", p.Name)
	}
}

// Stop asks the process to exit (SIGTERM to the group, after SIGCONT in case
// it is paused) and kills it after grace.
func (p *Proc) Stop(grace time.Duration) error {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		return nil
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGCONT)
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-done:
		return nil
	case <-time.After(grace):
		return p.Kill()
	}
}

// Pid of the current incarnation (0 if never started).
func (p *Proc) Pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.cmd.Process == nil {
		return 0
	}
	return p.cmd.Process.Pid
}
