package gossip

import "testing"

// The log-store-failing flag is bit 1 of the flags byte: it round-trips,
// leaves the leaving flag alone, and a decoder that predates it (which
// ignores unknown bits) still reads the rest of the metadata.
func TestMetaLogStoreFailingFlag(t *testing.T) {
	for _, w := range []wireMeta{
		{Meta: Meta{GRPCAddr: "10.0.0.1:7000", Version: "v1", LogStoreFailing: true}},
		{Meta: Meta{GRPCAddr: "10.0.0.1:7000", Version: "v1", LogStoreFailing: true}, leaving: true},
		{Meta: Meta{GRPCAddr: "10.0.0.1:7000", Version: "v1", LogStoreFailing: true, LogStoreErrors: true}},
		{Meta: Meta{GRPCAddr: "10.0.0.1:7000", Version: "v1"}, leaving: true},
	} {
		b, err := encodeMeta(w)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := decodeMeta(b); err != nil || got != w {
			t.Errorf("round trip %+v: got %+v, %v", w, got, err)
		}
		if want := w.LogStoreFailing; (b[1]&flagLogStoreFailing != 0) != want || (b[1]&flagLeaving != 0) != w.leaving {
			t.Errorf("%+v: flags byte %08b", w, b[1])
		}
	}
	// What the previous release decodes: it looked at bit 0 only.
	b, _ := EncodeMeta(Meta{GRPCAddr: "a:1", Version: "v", LogStoreFailing: true})
	if b[1]&flagLeaving != 0 {
		t.Errorf("failing flag sets the leaving bit: %08b", b[1])
	}
}
