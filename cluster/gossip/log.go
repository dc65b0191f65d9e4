package gossip

import (
	"bytes"
	"context"
	"log"
	"log/slog"
)

// slogWriter adapts memberlist's *log.Logger output ("[LEVEL] memberlist: msg")
// to slog. DEBUG goes to Debug, INFO to Info, WARN to Warn, ERR to Error;
// lines without a recognised level are logged at Info.
type slogWriter struct{ l *slog.Logger }

func newStdLogger(l *slog.Logger) *log.Logger {
	return log.New(slogWriter{l}, "", 0)
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
