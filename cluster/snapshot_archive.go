package cluster

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"

	"google.golang.org/protobuf/proto"

	"github.com/hodei-io/hodei/proto/hodeiv1"
)

// Backup archive format, version 1 (hodei operator snapshot save/restore):
//
//	"HODEIBAK" | uint32 format version (big-endian)
//	| record(SnapshotArchiveHeader)
//	| group_count × ( record(GroupSnapshotInfo) | info.size bytes of the group's part )
//	| SHA-256 (32 bytes) of every preceding byte
//
// where record = uvarint length | deterministic protobuf encoding (the
// messages are in proto/hodei/v1/hodei.proto). Sections come in the order
// meta group, shard 0, 1, ... n-1. A group's part is exactly its state
// machine's snapshot encoding ("HODEIMET..." for the meta group,
// "HODEISNP..." for a shard), which carries its own CRC-32C.
const (
	archiveMagic   = "HODEIBAK"
	ArchiveVersion = 1
	// maxArchiveRecord bounds a header record (not a group part).
	maxArchiveRecord = 1 << 20
)

// ErrCorruptArchive is wrapped by every error about an archive's content.
var ErrCorruptArchive = errors.New("corrupt backup archive")

func corruptArchive(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrCorruptArchive, fmt.Sprintf(format, args...))
}

// ArchiveSection is one group's part of an archive.
type ArchiveSection struct {
	Info *hodeiv1.GroupSnapshotInfo
	Data []byte
}

// Archive is a parsed, checksum-verified backup archive.
type Archive struct {
	Version  uint32
	Header   *hodeiv1.SnapshotArchiveHeader
	Sections []ArchiveSection // meta group first, then shards in order
	SHA256   string           // hex
	Size     int64
}

// archiveWriter writes an archive to w, hashing as it goes.
type archiveWriter struct {
	w    io.Writer
	h    hash.Hash
	n    int64
	left uint32 // sections still to write
	err  error
}

func newArchiveWriter(w io.Writer, hdr *hodeiv1.SnapshotArchiveHeader) (*archiveWriter, error) {
	aw := &archiveWriter{w: w, h: sha256.New(), left: hdr.GetGroupCount()}
	var b [12]byte
	copy(b[:], archiveMagic)
	binary.BigEndian.PutUint32(b[8:], ArchiveVersion)
	aw.write(b[:])
	aw.record(hdr)
	return aw, aw.err
}

func (aw *archiveWriter) write(p []byte) {
	if aw.err != nil {
		return
	}
	aw.h.Write(p)
	n, err := aw.w.Write(p)
	aw.n += int64(n)
	aw.err = err
}

func (aw *archiveWriter) record(m proto.Message) {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil && aw.err == nil {
		aw.err = err
	}
	var lb [binary.MaxVarintLen64]byte
	aw.write(lb[:binary.PutUvarint(lb[:], uint64(len(b)))])
	aw.write(b)
}

// section writes one group's part; info.size must be len(data).
func (aw *archiveWriter) section(info *hodeiv1.GroupSnapshotInfo, data []byte) error {
	if aw.left == 0 {
		return errors.New("archive: more sections than the header announced")
	}
	if info.GetSize() != uint64(len(data)) {
		return fmt.Errorf("archive: group %d: size %d but %d bytes", info.GetGroup(), info.GetSize(), len(data))
	}
	aw.left--
	aw.record(info)
	aw.write(data)
	return aw.err
}

// finish writes the checksum trailer and returns it (hex) and the archive size.
func (aw *archiveWriter) finish() (string, int64, error) {
	if aw.err != nil {
		return "", aw.n, aw.err
	}
	if aw.left != 0 {
		return "", aw.n, fmt.Errorf("archive: %d sections missing", aw.left)
	}
	sum := aw.h.Sum(nil)
	if _, err := aw.w.Write(sum); err != nil {
		return "", aw.n, err
	}
	aw.n += int64(len(sum))
	return hex.EncodeToString(sum), aw.n, nil
}

// WriteArchive writes a complete archive (tests and tools; the server
// streams sections as they arrive instead).
func WriteArchive(w io.Writer, hdr *hodeiv1.SnapshotArchiveHeader, sections []ArchiveSection) (string, int64, error) {
	aw, err := newArchiveWriter(w, hdr)
	if err != nil {
		return "", 0, err
	}
	for _, s := range sections {
		if err := aw.section(s.Info, s.Data); err != nil {
			return "", aw.n, err
		}
	}
	return aw.finish()
}

// ParseArchive verifies the checksum of an archive first, then parses it.
// Any problem is an error wrapping ErrCorruptArchive (or naming an
// unsupported format version). Sections alias data.
func ParseArchive(data []byte) (*Archive, error) {
	const fixed = len(archiveMagic) + 4
	if len(data) < fixed+sha256.Size {
		return nil, corruptArchive("%d bytes is too short (truncated?)", len(data))
	}
	if string(data[:len(archiveMagic)]) != archiveMagic {
		return nil, corruptArchive("not a hodei backup (bad magic %q)", data[:len(archiveMagic)])
	}
	body, trailer := data[:len(data)-sha256.Size], data[len(data)-sha256.Size:]
	sum := sha256.Sum256(body)
	if !bytes.Equal(sum[:], trailer) {
		return nil, corruptArchive("SHA-256 mismatch: computed %x, trailer says %x (truncated or modified)", sum, trailer)
	}
	a := &Archive{Version: binary.BigEndian.Uint32(body[len(archiveMagic):]), SHA256: hex.EncodeToString(sum[:]), Size: int64(len(data))}
	if a.Version != ArchiveVersion {
		return nil, fmt.Errorf("%w: archive format version %d is not supported (this binary reads version %d)", ErrCorruptArchive, a.Version, ArchiveVersion)
	}
	rest := body[fixed:]
	next := func(m proto.Message, what string) error {
		n, k := binary.Uvarint(rest)
		if k <= 0 || n > uint64(len(rest)-k) || n > maxArchiveRecord {
			return corruptArchive("bad %s record length", what)
		}
		if err := proto.Unmarshal(rest[k:k+int(n)], m); err != nil {
			return corruptArchive("%s record: %v", what, err)
		}
		rest = rest[k+int(n):]
		return nil
	}
	a.Header = &hodeiv1.SnapshotArchiveHeader{}
	if err := next(a.Header, "header"); err != nil {
		return nil, err
	}
	h := a.Header
	if h.GetShardCount() == 0 || h.GetGroupCount() != h.GetShardCount()+1 {
		return nil, corruptArchive("header says %d shards and %d groups", h.GetShardCount(), h.GetGroupCount())
	}
	for i := uint32(0); i < h.GetGroupCount(); i++ {
		info := &hodeiv1.GroupSnapshotInfo{}
		if err := next(info, "section"); err != nil {
			return nil, err
		}
		want := MetaGroup
		if i > 0 {
			want = i - 1
		}
		if info.GetGroup() != want {
			return nil, corruptArchive("section %d is of group %d, expected %d", i, info.GetGroup(), want)
		}
		if info.GetSize() > uint64(len(rest)) {
			return nil, corruptArchive("group %d: %d bytes announced, %d left", info.GetGroup(), info.GetSize(), len(rest))
		}
		a.Sections = append(a.Sections, ArchiveSection{Info: info, Data: rest[:info.GetSize()]})
		rest = rest[info.GetSize():]
	}
	if len(rest) != 0 {
		return nil, corruptArchive("%d trailing bytes after the last section", len(rest))
	}
	return a, nil
}

// GroupName is "meta" or "shard N".
func GroupName(g uint32) string {
	if g == MetaGroup {
		return "meta"
	}
	return fmt.Sprintf("shard %d", g)
}
