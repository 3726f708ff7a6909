package kubemesh_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/clustermesh/clustermesh/kubemesh"
)

// Enable two clusters of one kubeconfig, the second with the first one's
// mesh CA, and print what changed.
func ExampleEnable() {
	ctx := context.Background()
	for _, o := range []kubemesh.EnableOptions{
		{Context: "east", ClusterName: "east", ClusterID: 1},
		{Context: "west", ClusterName: "west", ClusterID: 2, CAFromContext: "east"},
	} {
		res, err := kubemesh.Enable(ctx, o)
		if err != nil {
			log.Fatal(err)
		}
		for _, c := range res.Objects {
			fmt.Printf("%s: %s/%s %s\n", res.Context, c.Kind, c.Name, c.Action)
		}
		for _, w := range res.Warnings {
			fmt.Println("warning:", w)
		}
	}
}

// Connect two enabled clusters both ways, wait until the first one's mesh
// is ready, and print which cluster reads which.
func ExampleConnect() {
	ctx := context.Background()
	res, err := kubemesh.Connect(ctx, kubemesh.ConnectOptions{Context: "east", Destinations: []string{"west"}})
	if err != nil {
		log.Fatal(err) // every problem found, each with its fix; nothing was written
	}
	for _, s := range res.Steps {
		if r, ok := s.(kubemesh.APIServerRestart); ok {
			fmt.Printf("the apiserver of %s restarts: %v\n", r.Cluster, r.Reasons)
		}
	}
	for _, l := range res.Links {
		fmt.Printf("%s reads %s at %s\n", l.Reader, l.Target, l.Endpoint)
	}
	st, err := kubemesh.ReadStatus(ctx, kubemesh.StatusOptions{Context: "east", Wait: true, Timeout: 5 * time.Minute})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s: %d agents reporting, peers %v\n", st.Cluster, st.Agents.Reporting, st.Peers)
}
