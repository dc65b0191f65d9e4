package chaos

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
)

// authFiles makes the secrets of a run with auth on (issue 12): a node
// secret and an admin token in the format of the cluster's tokens
// ("hodei_<16 hex>_<64 hex>"), written to 0600 files under out. It returns
// the token and the extra server and worker flags that use them.
func authFiles(out string) (token string, serverArgs, workerArgs []string, err error) {
	rnd := func(n int) (string, error) {
		b := make([]byte, n)
		_, err := rand.Read(b)
		return hex.EncodeToString(b), err
	}
	secret, err := rnd(32)
	if err != nil {
		return "", nil, nil, err
	}
	id, err := rnd(8)
	if err != nil {
		return "", nil, nil, err
	}
	tsec, err := rnd(32)
	if err != nil {
		return "", nil, nil, err
	}
	token = "hodei_" + id + "_" + tsec
	secretFile, tokenFile := filepath.Join(out, "node-secret"), filepath.Join(out, "admin-token")
	if err := os.WriteFile(secretFile, []byte(secret+"\n"), 0o600); err != nil {
		return "", nil, nil, err
	}
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		return "", nil, nil, err
	}
	serverArgs = []string{"--auth", "--auth-node-secret-file", secretFile, "--auth-bootstrap-token-file", tokenFile}
	workerArgs = []string{"--token-file", tokenFile}
	return token, serverArgs, workerArgs, nil
}
