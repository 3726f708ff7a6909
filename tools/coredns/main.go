// A throwaway tool module: it builds CoreDNS with the plugins the tests need
// (bind, errors, log, kubernetes) for the tests of names resolved through the
// cluster DNS (tools/coredns/build.sh, internal/corednstest): EndpointSlices
// of remote backends under cluster.local, and the Multi-Cluster Services
// names under clusterset.local, which the kubernetes plugin serves from
// ServiceImports with its multicluster option (docs/dns.md). It is not part
// of the main module.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
)

func init() {
	// In the order of CoreDNS's plugin.cfg.
	dnsserver.Directives = []string{"bind", "errors", "log", "kubernetes"}
}

func main() { coremain.Run() }
