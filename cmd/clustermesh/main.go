// Command clustermesh is the mesh apiserver, the node agent and the operator's
// CLI in one binary; see `clustermesh --help`.
package main

import (
	"os"

	"github.com/clustermesh/clustermesh/cli"
)

func main() { os.Exit(cli.Main()) }
