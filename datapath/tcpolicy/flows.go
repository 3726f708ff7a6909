package tcpolicy

import (
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/clustermesh/clustermesh/datapath/flows"
)

// SetFlowConfig sets what the programs report (package flows); it takes
// effect on the next packet. It is kept in the pinned configuration across
// restarts.
func (p *Programs) SetFlowConfig(c flows.Config) error {
	if err := p.lock("set flow config"); err != nil {
		return err
	}
	defer p.mu.Unlock()
	p.conf.SampleRate, p.conf.ClusterID = c.SampleRate, c.ClusterID
	p.conf.Flags &^= cfgTraceNew | cfgVerdicts
	if c.TraceNew {
		p.conf.Flags |= cfgTraceNew
	}
	if c.PolicyVerdicts {
		p.conf.Flags |= cfgVerdicts
	}
	if err := p.writeConfig(); err != nil {
		return fmt.Errorf("datapath: set flow config: %w", err)
	}
	return nil
}

// FlowConfig returns what SetFlowConfig last set (also by a previous run).
func (p *Programs) FlowConfig() (flows.Config, error) {
	if err := p.lock("read flow config"); err != nil {
		return flows.Config{}, err
	}
	defer p.mu.Unlock()
	v := p.conf
	return flows.Config{SampleRate: v.SampleRate, TraceNew: v.Flags&cfgTraceNew != 0,
		PolicyVerdicts: v.Flags&cfgVerdicts != 0, ClusterID: v.ClusterID}, nil
}

// Counters reads the programs' counters.
func (p *Programs) Counters() (flows.Counters, error) {
	if err := p.lock("read policy counters"); err != nil {
		return flows.Counters{}, err
	}
	defer p.mu.Unlock()
	return flows.ReadCounters(p.metrics)
}

// OpenFlows opens a reader of the programs' flow events, with its own
// handles of the ring buffer and the counters: closing the Programs does
// not stop it. Events written before it opened and not yet read by a
// previous reader are read first.
func (p *Programs) OpenFlows() (*flows.Reader, error) {
	if err := p.lock("open flows"); err != nil {
		return nil, err
	}
	ring, metrics, err := clone2(p.flows, p.metrics)
	p.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("datapath: open flows: %w", err)
	}
	return flows.NewReader(ring, metrics)
}

// clone2 duplicates two handles, both or neither.
func clone2(a, b *ebpf.Map) (*ebpf.Map, *ebpf.Map, error) {
	ca, err := a.Clone()
	if err != nil {
		return nil, nil, err
	}
	cb, err := b.Clone()
	if err != nil {
		ca.Close()
		return nil, nil, err
	}
	return ca, cb, nil
}
