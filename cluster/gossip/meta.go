package gossip

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unicode/utf8"

	"github.com/hashicorp/memberlist"
)

// MetaMaxSize is the largest encoded metadata memberlist accepts.
const MetaMaxSize = memberlist.MetaMaxSize

// metaFormat is the current wire format version of encoded Meta.
//
// Wire format (all versions):
//
//	byte 0   format version (>= 1)
//	byte 1   flags (bit 0: the node is leaving gracefully; bit 1: the node's
//	         Raft log store is failing writes or just recovered; bit 2: a
//	         write failed in the last seconds; other bits ignored)
//	uvarint len, bytes   GRPCAddr (UTF-8)
//	uvarint len, bytes   Version  (UTF-8)
//	...                  fields added by later versions
//
// Later format versions may only append fields, so a decoder accepts any
// version >= 1 and ignores trailing bytes. A version that needs an
// incompatible layout must use a different first byte scheme and will be
// rejected by this decoder (and the node refused by the alive delegate).
const metaFormat = 1

const (
	flagLeaving         = 1 << 0
	flagLogStoreFailing = 1 << 1 // decoders before it ignore the bit
	flagLogStoreErrors  = 1 << 2
)

// ErrBadMeta is wrapped by every metadata decoding error.
var ErrBadMeta = errors.New("gossip: bad node metadata")

// ErrMetaTooLarge is returned when encoded metadata exceeds MetaMaxSize.
var ErrMetaTooLarge = errors.New("gossip: node metadata too large")

// Meta is the identity a Hodei node gossips along with its name and gossip
// address. It travels in memberlist's node metadata.
type Meta struct {
	GRPCAddr string // address of the node's gRPC server (Raft is multiplexed over it)
	Version  string // Hodei build version
	// LogStoreFailing: the node's Raft log store is failing writes
	// (cluster/storehealth.go); it hands its leaderships away and must not
	// be given any.
	LogStoreFailing bool
	// LogStoreErrors: a write failed within the last seconds (its disk is
	// full now, not just recovering): it gets no votes.
	LogStoreErrors bool
}

// wireMeta is Meta plus internal flags.
type wireMeta struct {
	Meta
	leaving bool
}

// encodeMeta encodes m; it fails when the result would not fit memberlist.
func encodeMeta(m wireMeta) ([]byte, error) {
	b := make([]byte, 0, 2+2*binary.MaxVarintLen64+len(m.GRPCAddr)+len(m.Version))
	b = append(b, metaFormat)
	var flags byte
	if m.leaving {
		flags |= flagLeaving
	}
	if m.LogStoreFailing {
		flags |= flagLogStoreFailing
	}
	if m.LogStoreErrors {
		flags |= flagLogStoreErrors
	}
	b = append(b, flags)
	b = binary.AppendUvarint(b, uint64(len(m.GRPCAddr)))
	b = append(b, m.GRPCAddr...)
	b = binary.AppendUvarint(b, uint64(len(m.Version)))
	b = append(b, m.Version...)
	if len(b) > MetaMaxSize {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrMetaTooLarge, len(b), MetaMaxSize)
	}
	return b, nil
}

// EncodeMeta returns the wire form of m.
func EncodeMeta(m Meta) ([]byte, error) { return encodeMeta(wireMeta{Meta: m}) }

// DecodeMeta parses the wire form produced by EncodeMeta. Every failure
// wraps ErrBadMeta; it never panics on arbitrary input.
func DecodeMeta(b []byte) (Meta, error) {
	w, err := decodeMeta(b)
	return w.Meta, err
}

func decodeMeta(b []byte) (wireMeta, error) {
	var w wireMeta
	if len(b) == 0 {
		return w, fmt.Errorf("%w: empty", ErrBadMeta)
	}
	if len(b) > MetaMaxSize {
		return w, fmt.Errorf("%w: %d bytes exceeds %d", ErrBadMeta, len(b), MetaMaxSize)
	}
	if b[0] == 0 {
		return w, fmt.Errorf("%w: format version 0", ErrBadMeta)
	}
	if len(b) < 2 {
		return w, fmt.Errorf("%w: truncated header", ErrBadMeta)
	}
	w.leaving = b[1]&flagLeaving != 0
	w.LogStoreFailing = b[1]&flagLogStoreFailing != 0
	w.LogStoreErrors = b[1]&flagLogStoreErrors != 0
	rest := b[2:]
	field := func(name string) (string, error) {
		n, k := binary.Uvarint(rest)
		if k <= 0 {
			return "", fmt.Errorf("%w: bad length of %s", ErrBadMeta, name)
		}
		rest = rest[k:]
		if n > uint64(len(rest)) {
			return "", fmt.Errorf("%w: %s length %d exceeds remaining %d bytes", ErrBadMeta, name, n, len(rest))
		}
		s := rest[:n]
		rest = rest[n:]
		if !utf8.Valid(s) {
			return "", fmt.Errorf("%w: %s is not UTF-8", ErrBadMeta, name)
		}
		return string(s), nil
	}
	var err error
	if w.GRPCAddr, err = field("grpc address"); err != nil {
		return wireMeta{}, err
	}
	if w.Version, err = field("version"); err != nil {
		return wireMeta{}, err
	}
	// Trailing bytes belong to newer format versions.
	return w, nil
}
