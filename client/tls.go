package client

import (
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/hodei-io/hodei/transport/tlsutil"
)

// setupTLS makes the client's transport credentials from Config.TLS or
// Config.TLSFiles (loading the files: an error names the file), or
// insecure ones without either.
func (c *Client) setupTLS() error {
	switch {
	case c.cfg.TLS != nil:
		cfg := c.cfg.TLS.Clone()
		if cfg.ServerName == "" {
			cfg.ServerName = tlsutil.ServerRoleName
		}
		c.creds = credentials.NewTLS(cfg)
	case c.cfg.TLSFiles.Enabled():
		r, err := tlsutil.NewReloader(c.cfg.TLSFiles, tlsutil.Options{Interval: c.cfg.TLSReloadInterval, Check: tlsutil.ClientCheck})
		if err != nil {
			return err
		}
		c.tlsFiles = r
		c.creds = credentials.NewTLS(r.ClientConfig(nil))
	default:
		c.creds = insecure.NewCredentials()
	}
	return nil
}

// TLSEnabled reports whether the client dials with TLS.
func (c *Client) TLSEnabled() bool { return c.cfg.TLS != nil || c.tlsFiles != nil }

// ReloadTLS reads Config.TLSFiles again (a worker calls it on SIGHUP; file
// changes are also picked up by polling). Files that do not load are
// refused and the previous ones stay in use. New connections use the new
// files; open ones keep theirs. Without TLSFiles it does nothing.
func (c *Client) ReloadTLS() error {
	if c.tlsFiles == nil {
		return nil
	}
	return c.tlsFiles.Reload()
}
