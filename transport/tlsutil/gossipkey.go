package tlsutil

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os"
	"strings"
)

// GossipKeySize is the size of the keys NewGossipKey makes (AES-256).
const GossipKeySize = 32

// NewGossipKey returns a fresh random gossip encryption key, base64.
func NewGossipKey() string {
	var b [GossipKeySize]byte
	_, _ = rand.Read(b[:]) // never fails (Go >= 1.24 crashes instead)
	return base64.StdEncoding.EncodeToString(b[:])
}

// ParseGossipKeys parses a keyring: base64 keys of 16, 24 or 32 bytes
// (AES-128/192/256), one per line or separated by commas; blank lines and
// lines starting with '#' are skipped. The first key is the primary one
// (memberlist encrypts with it); the others are only accepted for
// decryption, which is how a key is rotated without a gossip partition.
func ParseGossipKeys(text string) ([][]byte, error) {
	var keys [][]byte
	seen := map[string]bool{}
	sc := bufio.NewScanner(strings.NewReader(text))
	for line := 1; sc.Scan(); line++ {
		l := strings.TrimSpace(sc.Text())
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		for _, part := range strings.Split(l, ",") {
			part = strings.TrimSpace(part)
			if part == "" {
				continue
			}
			k, err := base64.StdEncoding.DecodeString(part)
			if err != nil {
				return nil, fmt.Errorf("gossip key on line %d: not base64: %v", line, err)
			}
			if n := len(k); n != 16 && n != 24 && n != 32 {
				return nil, fmt.Errorf("gossip key on line %d: %d bytes, want 16, 24 or 32", line, n)
			}
			if !seen[string(k)] {
				seen[string(k)] = true
				keys = append(keys, k)
			}
		}
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("no gossip key found")
	}
	return keys, nil
}

// ReadGossipKeys reads a keyring file (ParseGossipKeys); errors name it.
func ReadGossipKeys(path string) ([][]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("gossip key file: %w", err)
	}
	keys, err := ParseGossipKeys(string(bytes.TrimPrefix(b, []byte("\xef\xbb\xbf"))))
	if err != nil {
		return nil, fmt.Errorf("gossip key file %s: %w", path, err)
	}
	return keys, nil
}
