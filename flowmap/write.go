package flowmap

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
)

// WriteJSON writes s as one indented JSON document.
func WriteJSON(w io.Writer, s Snapshot) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(s); err != nil {
		return fmt.Errorf("writing the map as JSON: %w", err)
	}
	return nil
}

// WriteDOT writes s as a Graphviz digraph: a cluster subgraph per mesh
// cluster and namespace, an edge per map edge labelled with its port,
// protocol and rate, red when most of its flows were dropped, orange when
// some were.
func WriteDOT(w io.Writer, s Snapshot) error {
	bw := bufio.NewWriter(w)
	fmt.Fprintf(bw, "digraph mesh {\n  rankdir=LR;\n  node [shape=box, style=rounded];\n  label=%s;\n", dotQuote("window "+s.Window))
	groups := map[string]map[string][]Node{}
	var order []string
	for _, n := range s.Nodes {
		if groups[n.Cluster] == nil {
			groups[n.Cluster] = map[string][]Node{}
			order = append(order, n.Cluster)
		}
		groups[n.Cluster][n.Namespace] = append(groups[n.Cluster][n.Namespace], n)
	}
	for i, c := range sortedStrings(order) {
		writeDOTCluster(bw, i, c, groups[c])
	}
	for _, e := range s.Edges {
		color := "darkgreen"
		switch {
		case e.Dropped():
			color = "red"
		case e.DropShare > 0:
			color = "orange"
		}
		label := strconv.FormatUint(uint64(e.Port), 10) + "/" + e.Protocol
		if e.L7 != "" {
			label += " " + e.L7
		}
		label += " " + strconv.FormatFloat(e.Rate, 'g', 3, 64) + "/s"
		fmt.Fprintf(bw, "  %s -> %s [label=%s, color=%s];\n", dotQuote(e.Source), dotQuote(e.Destination), dotQuote(label), color)
	}
	bw.WriteString("}\n")
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("writing the map as DOT: %w", err)
	}
	return nil
}

func writeDOTCluster(bw *bufio.Writer, i int, cluster string, namespaces map[string][]Node) {
	indent := "  "
	if cluster != "" {
		fmt.Fprintf(bw, "  subgraph cluster_%d {\n    label=%s;\n", i, dotQuote(cluster))
		indent = "    "
	}
	var names []string
	for ns := range namespaces {
		names = append(names, ns)
	}
	for j, ns := range sortedStrings(names) {
		inner := indent
		if ns != "" {
			fmt.Fprintf(bw, "%ssubgraph cluster_%d_%d {\n%s  label=%s;\n", indent, i, j, indent, dotQuote(ns))
			inner += "  "
		}
		for _, n := range namespaces[ns] {
			fmt.Fprintf(bw, "%s%s [label=%s];\n", inner, dotQuote(n.ID), dotQuote(n.Name))
		}
		if ns != "" {
			fmt.Fprintf(bw, "%s}\n", indent)
		}
	}
	if cluster != "" {
		bw.WriteString("  }\n")
	}
}

// dotQuote is s as a DOT string: quoted, with quotes, backslashes and line
// breaks escaped.
func dotQuote(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`, "\r", ``)
	return `"` + r.Replace(s) + `"`
}

func sortedStrings(s []string) []string {
	out := slices.Clone(s)
	slices.Sort(out)
	return out
}
