package gossip

import (
	"errors"
	"fmt"

	"github.com/hashicorp/memberlist"
)

// validateKeys checks gossip encryption keys (AES-128/192/256).
func validateKeys(keys [][]byte) error {
	for i, k := range keys {
		if n := len(k); n != 16 && n != 24 && n != 32 {
			return fmt.Errorf("gossip: key %d is %d bytes, want 16, 24 or 32", i+1, n)
		}
	}
	return nil
}

// setKeyring gives mc a keyring of cfg.Keys (the first is primary) and has
// memberlist refuse unencrypted messages both ways: with a keyring, a node
// only talks to members that know one of its keys.
func (g *Gossip) setKeyring(mc *memberlist.Config) error {
	if len(g.cfg.Keys) == 0 {
		return nil
	}
	kr, err := memberlist.NewKeyring(g.cfg.Keys[1:], g.cfg.Keys[0])
	if err != nil {
		return fmt.Errorf("gossip: keyring: %w", err)
	}
	g.keyring = kr
	mc.Keyring = kr
	mc.GossipVerifyIncoming = true
	mc.GossipVerifyOutgoing = true
	return nil
}

// Encrypted reports whether gossip is encrypted.
func (g *Gossip) Encrypted() bool { return g.keyring != nil }

// SetKeys replaces the keyring while gossip runs: keys[0] becomes the key
// that encrypts, every key of keys decrypts, and keys no longer listed are
// dropped. A key rotation is three such steps on every node (add the new
// key second; make it first; remove the old one), so that at every moment
// each node can read what the others send. Invalid keys change nothing; a
// gossip started without keys cannot start encrypting (that needs a
// restart of every node, since plaintext and encrypted members do not
// talk).
func (g *Gossip) SetKeys(keys [][]byte) error {
	if err := validateKeys(keys); err != nil {
		return err
	}
	if len(keys) == 0 {
		return errors.New("gossip: no keys (turning encryption off needs a restart)")
	}
	if g.keyring == nil {
		return errors.New("gossip: started without encryption; giving it keys needs a restart of every node")
	}
	g.opMu.Lock()
	defer g.opMu.Unlock()
	for _, k := range keys {
		if err := g.keyring.AddKey(k); err != nil {
			return fmt.Errorf("gossip: add key: %w", err)
		}
	}
	if err := g.keyring.UseKey(keys[0]); err != nil {
		return fmt.Errorf("gossip: use key: %w", err)
	}
	keep := make(map[string]bool, len(keys))
	for _, k := range keys {
		keep[string(k)] = true
	}
	for _, k := range g.keyring.GetKeys() {
		if !keep[string(k)] {
			if err := g.keyring.RemoveKey(k); err != nil {
				return fmt.Errorf("gossip: remove key: %w", err)
			}
		}
	}
	return nil
}
