//go:build chaoshook

package main

import (
	"context"
	"time"

	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/record"
)

// HeaderChaosHang names the header whose value (a Go duration) makes the
// mapping of its record take that long, in a binary built with the chaoshook
// tag only: the reliability suite's slow records (test/chaos). The wait ends
// with the mapping's ctx, as a slow mapping bounded by flow.record_timeout
// does; a record without the header maps as usual.
const HeaderChaosHang = "sluice-chaos-hang"

var testMapperHook = func(m flow.Mapper) flow.Mapper { return hangMapper{m} }

type hangMapper struct{ flow.Mapper }

func (h hangMapper) Map(ctx context.Context, r *record.Record) (record.Row, error) {
	for _, hd := range r.Headers {
		if hd.Key != HeaderChaosHang {
			continue
		}
		if d, err := time.ParseDuration(string(hd.Value)); err == nil {
			t := time.NewTimer(d)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return nil, ctx.Err()
			}
		}
	}
	return h.Mapper.Map(ctx, r)
}
