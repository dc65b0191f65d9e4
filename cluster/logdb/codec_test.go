package logdb

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

func sampleLogs() []*raft.Log {
	return []*raft.Log{
		{},
		{Index: 1, Term: 1, Type: raft.LogNoop},
		{Index: 7, Term: 3, Type: raft.LogCommand, Data: []byte("hello"), AppendedAt: time.Unix(1700000000, 123456789)},
		{Index: 1 << 62, Term: 1 << 40, Type: raft.LogConfiguration, Data: bytes.Repeat([]byte{0xab}, 1000), Extensions: []byte("ext"), AppendedAt: time.Unix(-5, 0)},
		{Index: 9, Term: 9, Type: raft.LogBarrier, Extensions: []byte{0}},
	}
}

func equalLog(a, b *raft.Log) bool {
	return a.Index == b.Index && a.Term == b.Term && a.Type == b.Type &&
		bytes.Equal(a.Data, b.Data) && bytes.Equal(a.Extensions, b.Extensions) &&
		a.AppendedAt.Equal(b.AppendedAt) && a.AppendedAt.IsZero() == b.AppendedAt.IsZero()
}

func TestCodecRoundTrip(t *testing.T) {
	for _, l := range sampleLogs() {
		b := appendLog(nil, l)
		if len(b) != encodedSize(l) {
			t.Fatalf("encodedSize %d, wrote %d", encodedSize(l), len(b))
		}
		got := raft.Log{Data: []byte("stale"), Extensions: []byte("stale")}
		if err := decodeLog(b, &got); err != nil {
			t.Fatalf("decode %+v: %v", l, err)
		}
		if !equalLog(l, &got) {
			t.Fatalf("round trip: want %+v got %+v", l, got)
		}
		if len(l.Data) == 0 && got.Data != nil || len(l.Extensions) == 0 && got.Extensions != nil {
			t.Fatalf("empty slices should decode to nil: %+v", got)
		}
		// Decoded slices must not alias the encoded bytes.
		if len(got.Data) > 0 {
			for i := range b {
				b[i] = 0
			}
			if !bytes.Equal(got.Data, l.Data) {
				t.Fatal("decoded Data aliases the input")
			}
		}
	}
}

// Every single-byte corruption and every truncation of an encoded entry is an
// error wrapping ErrCorrupt (the CRC catches what the structure does not).
func TestCodecCorruptionIsAnError(t *testing.T) {
	l := sampleLogs()[3]
	good := appendLog(nil, l)
	var got raft.Log
	for i := range good {
		for _, x := range []byte{0x01, 0x80, 0xff} {
			bad := bytes.Clone(good)
			bad[i] ^= x
			if err := decodeLog(bad, &got); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("flip byte %d by %#x: err = %v", i, x, err)
			}
		}
	}
	for n := 0; n < len(good); n++ {
		if err := decodeLog(good[:n], &got); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("truncated to %d: err = %v", n, err)
		}
	}
	if err := decodeLog(append(bytes.Clone(good), 0), &got); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("trailing byte: err = %v", err)
	}
}

func FuzzDecodeLog(f *testing.F) {
	for _, l := range sampleLogs() {
		f.Add(appendLog(nil, l))
	}
	f.Add([]byte{})
	f.Add([]byte{codecV1, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		var l raft.Log
		if err := decodeLog(b, &l); err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error does not wrap ErrCorrupt: %v", err)
			}
			return
		}
		// Whatever decodes must re-encode to the same bytes.
		if re := appendLog(nil, &l); !bytes.Equal(re, b) {
			t.Fatalf("re-encoding differs:\n%x\n%x", b, re)
		}
	})
}
