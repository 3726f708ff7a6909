package enforcer

import "github.com/clustermesh/clustermesh/datapath/tcpolicy"

// withProxyPort returns k redirected to the proxy listening on port (0:
// not redirected).
func withProxyPort(k tcpolicy.Key, port uint16) tcpolicy.Key {
	k.ProxyPort = port
	return k
}
