package cli

import (
	"github.com/spf13/pflag"
)

// kubeFlags are the flags that choose a kubeconfig (--kubeconfig, else
// $KUBECONFIG, else ~/.kube/config), as kubectl does; kubemesh.Open
// resolves its contexts.
type kubeFlags struct {
	kubeconfig string
}

func (k *kubeFlags) register(f *pflag.FlagSet) {
	f.StringVar(&k.kubeconfig, "kubeconfig", "", "kubeconfig file (default: $KUBECONFIG, else ~/.kube/config)")
}
