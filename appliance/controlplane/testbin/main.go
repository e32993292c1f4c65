// Command k8s-testbin is a multi-call binary carrying the upstream Kubernetes
// control-plane components, the node components (kubelet, kube-proxy) and etcd,
// so vc-appliance tests and the local development cluster run real servers and a
// real node built from the Go module proxy.
//
// The applet is chosen by the program name (symlinks) or by the first
// argument: k8s-testbin kube-apiserver --secure-port=... . Only the chosen
// applet's command is constructed, because several of them install process
// globals (signal handlers, feature gates) that may exist only once.
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	_ "time/tzdata"

	"github.com/spf13/cobra"
	"go.etcd.io/etcd/server/v3/etcdmain"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	kubectlcmd "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserverapp "k8s.io/kubernetes/cmd/kube-apiserver/app"
	kcmapp "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxyapp "k8s.io/kubernetes/cmd/kube-proxy/app"
	schedulerapp "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubeletapp "k8s.io/kubernetes/cmd/kubelet/app"
)

// commands builds the cobra command of a Kubernetes component on demand.
var commands = map[string]func() *cobra.Command{
	"kube-apiserver":          apiserverapp.NewAPIServerCommand,
	"kube-controller-manager": kcmapp.NewControllerManagerCommand,
	"kube-scheduler":          func() *cobra.Command { return schedulerapp.NewSchedulerCommand() },
	"kubelet":                 func() *cobra.Command { return kubeletapp.NewKubeletCommand(context.Background()) },
	"kube-proxy":              proxyapp.NewProxyCommand,
}

func isApplet(name string) bool {
	_, ok := commands[name]
	return ok || name == "etcd" || name == "kubectl"
}

func usage() {
	names := []string{"etcd", "kubectl"}
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	fmt.Fprintf(os.Stderr, "usage: k8s-testbin APPLET [flags]\napplets: %v\n", names)
	os.Exit(2)
}

func main() {
	applet, rest := filepath.Base(os.Args[0]), os.Args[1:]
	if !isApplet(applet) {
		if len(rest) == 0 || !isApplet(rest[0]) {
			usage()
		}
		applet, rest = rest[0], rest[1:]
	}
	// Every applet reads os.Args (cobra, kubectl plugins, etcd's flag set).
	os.Args = append([]string{applet}, rest...)
	switch applet {
	case "etcd":
		etcdmain.Main(os.Args)
	case "kubectl":
		if err := cli.RunNoErrOutput(kubectlcmd.NewDefaultKubectlCommand()); err != nil {
			kubectlutil.CheckErr(err)
		}
	default:
		os.Exit(cli.Run(commands[applet]()))
	}
}
