// Command promcheck checks Prometheus configuration and PromQL offline with
// Prometheus' own packages, so the deploy tests judge prometheus.yml and the
// Grafana dashboards' queries the way a real Prometheus server would.
//
// Usage:
//
//	promcheck config FILE...   load each file as a Prometheus server config
//	promcheck exprs            read a JSON array of PromQL strings on stdin,
//	                           write a JSON array of parse results on stdout
//
// A parse result is
//
//	{"expr": "...", "error": "" | "parse error text",
//	 "selectors": [{"metric": "name", "labels": ["label", ...]}],
//	 "groupings": [{"labels": ["by-label", ...], "without": false,
//	                "metrics": ["metric under the aggregation", ...]}]}
//
// Exit status: 0 when everything parsed, 1 when something did not, 2 on
// misuse. Built by deploy/tools/install.sh; read by tests/deploy.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"

	"github.com/prometheus/prometheus/config"
	// Service discovery mechanisms register themselves on import; the compose
	// scrape config uses DNS discovery to find every replica of a service.
	_ "github.com/prometheus/prometheus/discovery/dns"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
)

type selector struct {
	Metric string   `json:"metric"`
	Labels []string `json:"labels"`
}

type grouping struct {
	Labels  []string `json:"labels"`
	Without bool     `json:"without"`
	Metrics []string `json:"metrics"`
}

type result struct {
	Expr      string     `json:"expr"`
	Error     string     `json:"error"`
	Selectors []selector `json:"selectors"`
	Groupings []grouping `json:"groupings"`
}

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	switch os.Args[1] {
	case "config":
		if len(os.Args) < 3 {
			usage()
		}
		os.Exit(checkConfigs(os.Args[2:]))
	case "exprs":
		os.Exit(checkExprs(os.Stdin, os.Stdout))
	default:
		usage()
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: promcheck config FILE... | promcheck exprs < exprs.json")
	os.Exit(2)
}

func checkConfigs(files []string) int {
	status := 0
	logger := slog.New(slog.DiscardHandler)
	for _, f := range files {
		if _, err := config.LoadFile(f, false, logger); err != nil {
			fmt.Printf("FAIL %s: %v\n", f, err)
			status = 1
			continue
		}
		fmt.Printf("OK %s\n", f)
	}
	return status
}

func checkExprs(in io.Reader, out io.Writer) int {
	var exprs []string
	if err := json.NewDecoder(in).Decode(&exprs); err != nil {
		fmt.Fprintf(os.Stderr, "promcheck: stdin is not a JSON array of strings: %v\n", err)
		return 2
	}
	p := parser.NewParser(parser.Options{})
	status := 0
	results := make([]result, 0, len(exprs))
	for _, e := range exprs {
		r := result{Expr: e, Selectors: []selector{}, Groupings: []grouping{}}
		node, err := p.ParseExpr(e)
		if err != nil {
			r.Error = err.Error()
			status = 1
			results = append(results, r)
			continue
		}
		parser.Inspect(node, func(n parser.Node, _ []parser.Node) error {
			switch v := n.(type) {
			case *parser.VectorSelector:
				r.Selectors = append(r.Selectors, describeSelector(v))
			case *parser.AggregateExpr:
				r.Groupings = append(r.Groupings, grouping{
					Labels:  append([]string{}, v.Grouping...),
					Without: v.Without,
					Metrics: metricsUnder(v.Expr),
				})
			}
			return nil
		})
		results = append(results, r)
	}
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	if err := enc.Encode(results); err != nil {
		fmt.Fprintf(os.Stderr, "promcheck: %v\n", err)
		return 2
	}
	return status
}

func describeSelector(v *parser.VectorSelector) selector {
	s := selector{Metric: v.Name, Labels: []string{}}
	for _, m := range v.LabelMatchers {
		if m.Name == labels.MetricName {
			if s.Metric == "" && m.Type == labels.MatchEqual {
				s.Metric = m.Value
			}
			continue
		}
		s.Labels = append(s.Labels, m.Name)
	}
	sort.Strings(s.Labels)
	return s
}

func metricsUnder(e parser.Expr) []string {
	seen := map[string]bool{}
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		if v, ok := n.(*parser.VectorSelector); ok {
			seen[describeSelector(v).Metric] = true
		}
		return nil
	})
	names := make([]string, 0, len(seen))
	for name := range seen {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}
