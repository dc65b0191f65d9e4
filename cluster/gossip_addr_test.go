package cluster

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestGossipAddrs(t *testing.T) {
	names := map[string][]netip.Addr{
		"n1":    {netip.MustParseAddr("fd00::1"), netip.MustParseAddr("172.18.0.2")},
		"v6":    {netip.MustParseAddr("fd00::7")},
		"empty": {},
	}
	resolve := func(ctx context.Context, host string) ([]netip.Addr, error) {
		if ips, ok := names[host]; ok {
			return ips, nil
		}
		return nil, errors.New("no such host")
	}
	for _, tc := range []struct {
		name                  string
		gossip, adv           string
		listen, grpcAdvertise string
		wantBind, wantAdv     string
		wantErr               string
	}{
		{name: "loopback dev", listen: "127.0.0.1:7401", grpcAdvertise: "127.0.0.1:7401", wantBind: "127.0.0.1:0"},
		{name: "container: bind all, advertise the gRPC host name", listen: "0.0.0.0:7401", grpcAdvertise: "n1:7401",
			wantBind: "0.0.0.0:0", wantAdv: "172.18.0.2:0"},
		{name: "ipv6-only name", listen: "[::]:7401", grpcAdvertise: "v6:7401", wantBind: "[::]:0", wantAdv: "[fd00::7]:0"},
		{name: "bind all, advertised gRPC IP", listen: "0.0.0.0:7401", grpcAdvertise: "10.0.0.5:7401",
			wantBind: "0.0.0.0:0", wantAdv: "10.0.0.5:0"},
		{name: "nothing known: memberlist picks", listen: "0.0.0.0:7401", grpcAdvertise: "0.0.0.0:7401", wantBind: "0.0.0.0:0"},
		{name: "explicit pair", gossip: "0.0.0.0:7946", adv: "n1:7946", listen: "0.0.0.0:7401", grpcAdvertise: "x:1",
			wantBind: "0.0.0.0:7946", wantAdv: "172.18.0.2:7946"},
		{name: "explicit specific bind", gossip: "10.1.1.1:7946", listen: "0.0.0.0:7401", grpcAdvertise: "n1:7401",
			wantBind: "10.1.1.1:7946"},
		{name: "empty-host bind", gossip: ":7946", listen: "0.0.0.0:7401", grpcAdvertise: "n1:7401",
			wantBind: ":7946", wantAdv: "172.18.0.2:0"},
		{name: "unresolvable advertised gRPC host", listen: "0.0.0.0:7401", grpcAdvertise: "nope:7401",
			wantErr: `gossip advertise address from the gRPC address "nope:7401": resolve nope`},
		{name: "name without addresses", listen: "0.0.0.0:7401", grpcAdvertise: "empty:7401", wantErr: "no addresses"},
		{name: "unspecified advertise", adv: "0.0.0.0:7946", listen: "0.0.0.0:7401", grpcAdvertise: "n1:7401",
			wantErr: "--gossip-advertise \"0.0.0.0:7946\": an unspecified IP cannot be advertised"},
		{name: "bad advertise", adv: "n1", listen: "0.0.0.0:7401", grpcAdvertise: "n1:7401", wantErr: "--gossip-advertise \"n1\""},
		{name: "bad bind", gossip: "7946", listen: "0.0.0.0:7401", grpcAdvertise: "n1:7401", wantErr: "--gossip \"7946\": want ip:port"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			defer cancel()
			cfg := Config{GossipAddr: tc.gossip, GossipAdvertise: tc.adv}
			bind, adv, err := gossipAddrs(ctx, cfg, tc.listen, tc.grpcAdvertise, resolve)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || bind != tc.wantBind || adv != tc.wantAdv {
				t.Fatalf("got (%q, %q, %v), want (%q, %q)", bind, adv, err, tc.wantBind, tc.wantAdv)
			}
		})
	}
}
