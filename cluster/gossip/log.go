package gossip

import (
	"bytes"
	"context"
	"log"
	"log/slog"
	"sync/atomic"
)

// slogWriter adapts memberlist's *log.Logger output ("[LEVEL] memberlist: msg")
// to slog. DEBUG goes to Debug, INFO to Info, WARN to Warn, ERR to Error;
// lines without a recognised level are logged at Info. Once off is set
// (the Gossip is shutting down) lines are dropped: memberlist goroutines
// that outlive Close must not reach the caller's logger, and what they
// report then ("use of closed network connection") is shutdown noise.
type slogWriter struct {
	l   *slog.Logger
	off *atomic.Bool // nil: never off
}

func newStdLogger(l *slog.Logger, off *atomic.Bool) *log.Logger {
	return log.New(slogWriter{l, off}, "", 0)
}

var levelPrefixes = []struct {
	p   []byte
	lvl slog.Level
}{
	{[]byte("[DEBUG]"), slog.LevelDebug},
	{[]byte("[INFO]"), slog.LevelInfo},
	{[]byte("[WARN]"), slog.LevelWarn},
	{[]byte("[ERR]"), slog.LevelError},
	{[]byte("[ERROR]"), slog.LevelError},
}

func (w slogWriter) Write(p []byte) (int, error) {
	n := len(p)
	if w.off != nil && w.off.Load() {
		return n, nil
	}
	line := bytes.TrimSpace(p)
	lvl := slog.LevelInfo
	for _, lp := range levelPrefixes {
		if bytes.HasPrefix(line, lp.p) {
			lvl = lp.lvl
			line = bytes.TrimSpace(line[len(lp.p):])
			break
		}
	}
	line = bytes.TrimPrefix(line, []byte("memberlist: "))
	ctx := context.Background()
	if w.l.Enabled(ctx, lvl) {
		w.l.Log(ctx, lvl, string(line))
	}
	return n, nil
}
