package meshapiserver

import (
	"fmt"

	"github.com/clustermesh/clustermesh/statesource"
	"github.com/clustermesh/clustermesh/wire"
)

// addServiceExports puts into kv the MCS API export spec of every service
// of st that has a ServiceExport (statesource.Service.Export), under
// cilium/state/serviceexports/v1/<cluster>/<namespace>/<name> as Cilium
// publishes them: every cluster builds its ServiceImports from the specs
// of all (package k8smcs). The cluster config says
// capabilities.serviceExportsEnabled, and the kind has its synced canary.
func addServiceExports(c wire.Cluster, st *statesource.State, kv desiredKV) error {
	for i := range st.Services {
		spec := st.Services[i].ExportSpec(c.Name)
		if spec == nil {
			continue
		}
		v, err := wire.EncodeServiceExport(spec)
		if err != nil {
			return fmt.Errorf("encoding the export of %s/%s: %w", spec.Namespace, spec.Name, err)
		}
		kv[spec.Key()] = v
	}
	return nil
}

// serviceExportsEnabled is the cluster config's
// capabilities.serviceExportsEnabled: this apiserver publishes export specs
// and their canary (wire.PublishedKinds).
func serviceExportsEnabled() *bool {
	enabled := true
	return &enabled
}
