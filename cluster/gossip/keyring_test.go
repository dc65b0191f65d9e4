package gossip

import (
	"bytes"
	"fmt"
	"testing"
	"time"
)

func key(b byte) []byte { return bytes.Repeat([]byte{b}, 32) }

func startKeyed(t *testing.T, name string, keys ...[]byte) node {
	t.Helper()
	lb := &logBuf{}
	cfg := fastConfig(name, lb)
	cfg.Keys = keys
	g, err := Start(cfg)
	if err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	t.Cleanup(func() {
		g.Close()
		if t.Failed() {
			t.Logf("logs of %s:\n%s", name, lb.String())
		}
	})
	return node{g, lb}
}

// TestEncryptedGossip: members with a common key gossip; a member without
// it (or without encryption) cannot join; a key rotation through SetKeys
// keeps the members talking.
func TestEncryptedGossip(t *testing.T) {
	a := startKeyed(t, "a", key(1))
	b := startKeyed(t, "b", key(1))
	if !a.Encrypted() {
		t.Fatal("a keyed gossip says it is not encrypted")
	}
	if _, err := b.Join([]string{a.LocalAddr()}); err != nil {
		t.Fatalf("join with the same key: %v", err)
	}
	waitFor(t, 10*time.Second, "a to see b", func() error { _, err := memberState(a.Gossip, "b"); return err })

	wrong := startKeyed(t, "w", key(2))
	if _, err := wrong.Join([]string{a.LocalAddr()}); err == nil {
		t.Fatal("a member with another key joined")
	}
	plain := start(t, "p")
	if _, err := plain.Join([]string{a.LocalAddr()}); err == nil {
		t.Fatal("a plaintext member joined an encrypted gossip")
	}
	if _, ok := a.Member("w"); ok {
		t.Fatal("a learned about the member with the wrong key")
	}

	// Rotation: add key 3 everywhere, make it primary everywhere, drop key 1.
	for _, step := range [][][]byte{{key(1), key(3)}, {key(3), key(1)}, {key(3)}} {
		for _, n := range []node{a, b} {
			if err := n.SetKeys(step); err != nil {
				t.Fatal(err)
			}
		}
	}
	if got := a.keyring.GetKeys(); len(got) != 1 || !bytes.Equal(got[0], key(3)) {
		t.Fatalf("keys after rotation: %d", len(got))
	}
	// A newcomer with only the new key joins.
	c := startKeyed(t, "c", key(3))
	if _, err := c.Join([]string{b.LocalAddr()}); err != nil {
		t.Fatalf("join with the rotated key: %v", err)
	}
	waitFor(t, 10*time.Second, "a to see c alive", func() error {
		m, err := memberState(a.Gossip, "c")
		if err == nil && m.State != Alive {
			err = fmt.Errorf("c is %v", m.State)
		}
		return err
	})
	if err := a.SetKeys([][]byte{[]byte("short")}); err == nil {
		t.Fatal("a 5-byte key was accepted")
	}
	if err := plain.SetKeys([][]byte{key(3)}); err == nil {
		t.Fatal("a plaintext gossip accepted keys")
	}
	if _, err := Start(Config{Name: "x", BindAddr: "127.0.0.1:0", Keys: [][]byte{{1, 2}}}); err == nil {
		t.Fatal("Start accepted a 2-byte key")
	}
}
