//go:build !chaoshook

package main

import "github.com/sluicehq/sluice/internal/flow"

// testMapperHook is nil in sluice: only a binary built with the chaoshook tag
// (the reliability suite's) wraps the mapping.
var testMapperHook func(flow.Mapper) flow.Mapper
