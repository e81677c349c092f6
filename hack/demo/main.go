// Command demo is `make demo`: the operator and the runtime end to end on one machine.
//
// It starts a control plane (kube-apiserver and etcd from KUBEBUILDER_ASSETS, on loopback),
// installs the CRDs, runs the operator's manager in this process, applies the sample
// TradingStack and prints its conditions as they change. There is no kubelet, so no pod runs:
// the demo writes the status of the StatefulSet, the Deployments and the migration Job as a
// kubelet (and the Job controller) would, and says so. It then reads back the ConfigMap and
// Secrets the operator generated, starts `tradingd migrate` and `tradingd serve` locally as
// the Deployment would, against a fresh database on the local PostgreSQL and a database of its
// own on the local Redis, and plays a short trader session. Without -once it leaves everything
// running until Ctrl-C; either way it stops every process and removes every temporary folder
// and the database it created.
//
//	make demo    # KUBEBUILDER_ASSETS=$(hack/envtest-assets.sh) hack/services.sh go run ./hack/demo
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/go-logr/logr"
	ctrl "sigs.k8s.io/controller-runtime"
)

// options are the demo's settings; the test fills them in directly.
type options struct {
	Once     bool   // exit (cleaning up) after the scripted session
	Root     string // repository root: CRDs, sample, bin/
	Tradingd string // the tradingd binary to run
	Sample   string // the TradingStack manifest to apply
	// Namespace the sample goes into when it names none.
	Namespace string
}

func main() {
	var opts options
	flag.BoolVar(&opts.Once, "once", false, "exit, cleaning up everything, after the scripted session")
	flag.StringVar(&opts.Tradingd, "tradingd", "", "tradingd binary (default bin/tradingd of the repository)")
	flag.StringVar(&opts.Sample, "sample", "", "TradingStack manifest (default config/samples/trading_v1alpha1_tradingstack.yaml)")
	flag.StringVar(&opts.Namespace, "namespace", "default", "namespace for a sample that names none")
	flag.Parse()

	// The operator's own log: errors only, so that the demo's lines stay readable.
	ctrl.SetLogger(logr.FromSlogHandler(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError})))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Stdout, opts); err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

// printer writes the demo's numbered steps and timestamped lines.
type printer struct{ w io.Writer }

func (p printer) step(format string, a ...any) {
	fmt.Fprintf(p.w, "\n==> "+format+"\n", a...)
}

func (p printer) line(format string, a ...any) {
	fmt.Fprintf(p.w, "    "+format+"\n", a...)
}
