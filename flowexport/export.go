// Package flowexport owns flow export to JSON-lines files: Hubble's dynamic
// exporters (`flowLogs:` entries in a YAML file that the agent re-reads when
// it changes), each with its include and exclude filters (package
// flowfilter), a field mask, size-based rotation with backups, and every
// event it could not write counted and reported, never lost silently.
//
// Each line is Hubble's export format, a GetFlowsResponse in protojson:
// {"flow":{...},"node_name":"...","time":"..."}, or {"lost_events":{...},...}
// where the source dropped events because the exporter fell behind.
package flowexport

import (
	"context"
	"errors"

	observerpb "github.com/cilium/cilium/api/v1/observer"
)

// Source is where the flows come from (the agent's observe.Hub).
type Source interface {
	// Follow calls fn for every new event (flows, and lost_events when this
	// follower fell behind) until ctx is done or fn returns an error.
	Follow(ctx context.Context, fn func(*observerpb.GetFlowsResponse) error) error
}

// The errors of this package wrap one of these.
var (
	// ErrInvalidConfig is a configuration file that cannot be used: YAML
	// that does not parse, an unknown key, a missing or duplicated name or
	// path, a bad filter or field mask. The last valid exporters keep
	// running.
	ErrInvalidConfig = errors.New("invalid flow export config")
	// ErrNoPath is a Config without the configuration file's path.
	ErrNoPath = errors.New("flow export needs the path of its configuration file")
)
