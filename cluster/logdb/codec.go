package logdb

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"time"

	"github.com/hashicorp/raft"
)

// ErrCorrupt is wrapped by every error that reports bytes on disk that do
// not decode (bad version, truncated field, checksum mismatch, key/index
// mismatch, malformed stable value).
var ErrCorrupt = errors.New("logdb: corrupt record")

// codecV1 is the leading byte of every encoded raft.Log.
//
// Layout (v1):
//
//	version   u8      (= 1)
//	type      u8      raft.LogType
//	index     uvarint
//	term      uvarint
//	appended  varint  AppendedAt as Unix nanoseconds; 0 means the zero time
//	dataLen   uvarint
//	data      dataLen bytes
//	extLen    uvarint
//	ext       extLen bytes
//	crc       u32 big-endian CRC-32C (Castagnoli) of every byte before it
//
// The index is also the bbolt key; storing it again lets a read check that
// the record is the one it asked for.
const codecV1 byte = 1

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// encodedSize returns the exact number of bytes appendLog writes for l.
func encodedSize(l *raft.Log) int {
	return 2 + uvarintLen(l.Index) + uvarintLen(l.Term) + varintLen(appendedNanos(l.AppendedAt)) +
		uvarintLen(uint64(len(l.Data))) + len(l.Data) +
		uvarintLen(uint64(len(l.Extensions))) + len(l.Extensions) + 4
}

// appendLog appends the v1 encoding of l to dst.
func appendLog(dst []byte, l *raft.Log) []byte {
	start := len(dst)
	dst = append(dst, codecV1, byte(l.Type))
	dst = binary.AppendUvarint(dst, l.Index)
	dst = binary.AppendUvarint(dst, l.Term)
	dst = binary.AppendVarint(dst, appendedNanos(l.AppendedAt))
	dst = binary.AppendUvarint(dst, uint64(len(l.Data)))
	dst = append(dst, l.Data...)
	dst = binary.AppendUvarint(dst, uint64(len(l.Extensions)))
	dst = append(dst, l.Extensions...)
	return binary.BigEndian.AppendUint32(dst, crc32.Checksum(dst[start:], castagnoli))
}

// decodeLog decodes b into l. The Data and Extensions of l are copied (they
// never alias b, which is bbolt memory valid only inside its transaction).
// Bad bytes give an error wrapping ErrCorrupt, never a panic.
func decodeLog(b []byte, l *raft.Log) error {
	if len(b) < 2+4 {
		return fmt.Errorf("%w: %d bytes is too short", ErrCorrupt, len(b))
	}
	if b[0] != codecV1 {
		return fmt.Errorf("%w: unknown encoding version %d", ErrCorrupt, b[0])
	}
	body, sum := b[:len(b)-4], binary.BigEndian.Uint32(b[len(b)-4:])
	if got := crc32.Checksum(body, castagnoli); got != sum {
		return fmt.Errorf("%w: checksum mismatch (stored %08x, computed %08x)", ErrCorrupt, sum, got)
	}
	typ := raft.LogType(body[1])
	r := body[2:]
	index, r, err := readUvarint(r, "index")
	if err != nil {
		return err
	}
	term, r, err := readUvarint(r, "term")
	if err != nil {
		return err
	}
	nanos, n := binary.Varint(r)
	if n <= 0 {
		return fmt.Errorf("%w: bad appended_at varint", ErrCorrupt)
	}
	r = r[n:]
	data, r, err := readBytes(r, "data")
	if err != nil {
		return err
	}
	ext, r, err := readBytes(r, "extensions")
	if err != nil {
		return err
	}
	if len(r) != 0 {
		return fmt.Errorf("%w: %d trailing bytes", ErrCorrupt, len(r))
	}

	l.Index, l.Term, l.Type = index, term, typ
	l.Data, l.Extensions = nil, nil
	if len(data)+len(ext) > 0 {
		// One allocation for both slices; capacities are capped so an append
		// to Data cannot overwrite Extensions.
		buf := make([]byte, len(data)+len(ext))
		copy(buf, data)
		copy(buf[len(data):], ext)
		if len(data) > 0 {
			l.Data = buf[:len(data):len(data)]
		}
		if len(ext) > 0 {
			l.Extensions = buf[len(data):]
		}
	}
	if nanos == 0 {
		l.AppendedAt = time.Time{}
	} else {
		l.AppendedAt = time.Unix(0, nanos)
	}
	return nil
}

func readUvarint(b []byte, what string) (uint64, []byte, error) {
	v, n := binary.Uvarint(b)
	if n <= 0 {
		return 0, nil, fmt.Errorf("%w: bad %s varint", ErrCorrupt, what)
	}
	return v, b[n:], nil
}

func readBytes(b []byte, what string) ([]byte, []byte, error) {
	n, b, err := readUvarint(b, what+" length")
	if err != nil {
		return nil, nil, err
	}
	if n > uint64(len(b)) {
		return nil, nil, fmt.Errorf("%w: %s length %d exceeds remaining %d bytes", ErrCorrupt, what, n, len(b))
	}
	return b[:n], b[n:], nil
}

// appendedNanos maps the zero time to 0 (the Unix nanoseconds of the zero
// time are out of int64 range). A real time of exactly the Unix epoch would
// come back as the zero time; raft only uses AppendedAt for metrics.
func appendedNanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func uvarintLen(v uint64) int {
	n := 1
	for v >= 0x80 {
		v >>= 7
		n++
	}
	return n
}

func varintLen(v int64) int {
	u := uint64(v) << 1
	if v < 0 {
		u = ^u
	}
	return uvarintLen(u)
}

func putIndexKey(dst []byte, idx uint64) { binary.BigEndian.PutUint64(dst, idx) }

func indexOfKey(k []byte) uint64 { return binary.BigEndian.Uint64(k) }
