package wire

import "strings"

// The local view. With a scoped export mode (meshapiserver's --export-mode
// global-services or opt-in) a cluster's apiserver publishes only some of
// its endpoints, and the identities they use, under cilium/state/, which
// its peers read. The cluster's own agents need every endpoint of it (the
// identities of all local pods, the ipcache of the cluster's other
// nodes), so the apiserver also publishes the complete ipcache and
// identities — every endpoint, as mode all would — under a private prefix
// only the cluster's own user (remote-<cluster>) may read:
//
//	cilium/local/ip/v1/default/<address or CIDR>   stands for cilium/state/ip/v1/default/<address or CIDR>
//	cilium/local/identities/v1/id/<id>             stands for cilium/state/identities/v1/id/<id>
//	cilium/local/.synced/ip/v1                     synced canary of the view's ipcache
//	cilium/local/.synced/identities/v1             synced canary of the view's identities
//
// Values are exactly those of the state keys they stand for, validated
// the same way. Nodes and services are not scoped and stay where they are.
// The cluster config says the view exists with capabilities.localView
// (Cilium ignores the field); an apiserver exporting everything writes
// neither the field nor anything under cilium/local/. A reader maps every
// key back to its state key (LocalViewStateKey) and validates it as if it
// were that key. The canaries sit under the private prefix, so peers do
// not even learn whether a view exists.
const (
	LocalViewPrefix       = "cilium/local/"
	localViewSyncedPrefix = LocalViewPrefix + ".synced/"
)

// LocalViewKinds are the kinds the local view holds, in the order an agent
// starts them.
var LocalViewKinds = []Kind{Identities, IPCache}

// InLocalView reports whether kind k has a local view.
func InLocalView(k Kind) bool { return k == Identities || k == IPCache }

// LocalViewListPrefix is the prefix, with its trailing slash, under which
// the local view holds kind k (the cluster-independent state list prefix
// moved under LocalViewPrefix).
func LocalViewListPrefix(k Kind) string {
	return LocalViewPrefix + strings.TrimPrefix(k.ListPrefix(""), StatePrefix)
}

// LocalViewSyncedKey is the synced canary of kind k's local view.
func LocalViewSyncedKey(k Kind) string {
	return localViewSyncedPrefix + strings.TrimPrefix(k.Prefix(), StatePrefix)
}

// LocalViewSyncedKeys are the canaries of every kind of the local view.
func LocalViewSyncedKeys() []string {
	out := make([]string, len(LocalViewKinds))
	for i, k := range LocalViewKinds {
		out[i] = LocalViewSyncedKey(k)
	}
	return out
}

// LocalViewKey maps a state key of a kind the local view holds to its key
// in the view; false for any other key.
func LocalViewKey(stateKey string) (string, bool) {
	for _, k := range LocalViewKinds {
		if suffix, ok := strings.CutPrefix(stateKey, k.ListPrefix("")); ok {
			return LocalViewListPrefix(k) + suffix, true
		}
	}
	return "", false
}

// LocalViewStateKey maps a key of kind k's local view back to the state key
// it stands for; a key outside the view's prefix of k is returned as it is
// (its validation then refuses it).
func LocalViewStateKey(k Kind, key string) string {
	suffix, ok := strings.CutPrefix(key, LocalViewListPrefix(k))
	if !ok {
		return key
	}
	return k.ListPrefix("") + suffix
}
