// Package tenantip is a CoreDNS plugin for the DNS server of a VirtualCluster tenant.
//
// A tenant's Services get their ClusterIP from the tenant apiserver, but the Pods run
// in the super cluster, where only the super cluster's ClusterIP of the synced copy
// routes. The vc-appliance syncer writes that address into the tenant Service as the
// annotation transparency.tenancy.x-k8s.io/clusterIP (the contract of the original
// VirtualCluster's patched CoreDNS). This plugin sits above the kubernetes plugin and
// rewrites every A record whose address is the ClusterIP of an annotated tenant Service
// into the annotated address. Records of headless Services (Pod IPs, which are the same
// in tenant and super cluster), of Services not synced yet and of other zones pass
// unchanged.
//
// Corefile:
//
//	tenantip [ANNOTATION] {
//	    kubeconfig PATH [CONTEXT]
//	}
//
// Without kubeconfig, the in-cluster configuration is used (the Pod's service-account
// token, which the syncer issues from the tenant apiserver).
package tenantip

import (
	"context"
	"fmt"
	"net"
	"sync"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/plugin"
	clog "github.com/coredns/coredns/plugin/pkg/log"
	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
)

const (
	pluginName        = "tenantip"
	defaultAnnotation = "transparency.tenancy.x-k8s.io/clusterIP"
)

var log = clog.NewWithPlugin(pluginName)

func init() { plugin.Register(pluginName, setup) }

// table maps tenant ClusterIPs to super ClusterIPs; written by the informer, read per query.
type table struct {
	mu    sync.RWMutex
	byKey map[string]map[string]net.IP // service key -> tenant IP -> super IP
	byIP  map[string]net.IP
}

func newTable() *table {
	return &table{byKey: map[string]map[string]net.IP{}, byIP: map[string]net.IP{}}
}

// set replaces what service `key` contributes (nil: it is gone).
func (t *table) set(key string, pairs map[string]net.IP) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for ip := range t.byKey[key] {
		delete(t.byIP, ip)
	}
	delete(t.byKey, key)
	if len(pairs) == 0 {
		return
	}
	t.byKey[key] = pairs
	for ip, to := range pairs {
		t.byIP[ip] = to
	}
}

func (t *table) lookup(ip net.IP) net.IP {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.byIP[ip.String()]
}

// pairsOf reads one Service: its IPv4 ClusterIPs mapped to the annotated super address.
func pairsOf(svc *corev1.Service, annotation string) map[string]net.IP {
	to := net.ParseIP(svc.Annotations[annotation]).To4()
	if to == nil {
		return nil
	}
	pairs := map[string]net.IP{}
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 && svc.Spec.ClusterIP != "" {
		ips = []string{svc.Spec.ClusterIP}
	}
	for _, raw := range ips {
		if ip := net.ParseIP(raw).To4(); ip != nil {
			pairs[ip.String()] = to
		}
	}
	return pairs
}

// TenantIP is the plugin handler.
type TenantIP struct {
	Next   plugin.Handler
	table  *table
	synced func() bool
}

// Name implements plugin.Handler.
func (t *TenantIP) Name() string { return pluginName }

// Ready implements the ready plugin's Readiness: answers are right once the Services are listed.
func (t *TenantIP) Ready() bool { return t.synced != nil && t.synced() }

// ServeDNS implements plugin.Handler.
func (t *TenantIP) ServeDNS(ctx context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	return plugin.NextOrFailure(t.Name(), t.Next, ctx, &rewriter{ResponseWriter: w, table: t.table}, r)
}

// rewriter changes the addresses of A records on their way to the client.
type rewriter struct {
	dns.ResponseWriter
	table *table
}

func (rw *rewriter) WriteMsg(m *dns.Msg) error {
	for _, section := range [][]dns.RR{m.Answer, m.Extra} {
		for _, rr := range section {
			if a, ok := rr.(*dns.A); ok {
				if to := rw.table.lookup(a.A); to != nil {
					a.A = to
				}
			}
		}
	}
	return rw.ResponseWriter.WriteMsg(m)
}

type options struct {
	annotation string
	kubeconfig string
	context    string
}

func parse(c *caddy.Controller) (options, error) {
	opts := options{annotation: defaultAnnotation}
	for c.Next() {
		args := c.RemainingArgs()
		switch len(args) {
		case 0:
		case 1:
			opts.annotation = args[0]
		default:
			return opts, c.ArgErr()
		}
		for c.NextBlock() {
			switch c.Val() {
			case "kubeconfig":
				args := c.RemainingArgs()
				if len(args) < 1 || len(args) > 2 {
					return opts, c.ArgErr()
				}
				opts.kubeconfig = args[0]
				if len(args) == 2 {
					opts.context = args[1]
				}
			default:
				return opts, c.Errf("unknown property %q", c.Val())
			}
		}
	}
	return opts, nil
}

func restConfig(opts options) (*rest.Config, error) {
	if opts.kubeconfig == "" {
		return rest.InClusterConfig()
	}
	rules := &clientcmd.ClientConfigLoadingRules{ExplicitPath: opts.kubeconfig}
	overrides := &clientcmd.ConfigOverrides{CurrentContext: opts.context}
	return clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, overrides).ClientConfig()
}

func setup(c *caddy.Controller) error {
	opts, err := parse(c)
	if err != nil {
		return plugin.Error(pluginName, err)
	}
	cfg, err := restConfig(opts)
	if err != nil {
		return plugin.Error(pluginName, fmt.Errorf("kubernetes client configuration: %w", err))
	}
	cfg.UserAgent = "coredns-tenantip"
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return plugin.Error(pluginName, err)
	}
	t := &TenantIP{table: newTable()}
	factory := informers.NewSharedInformerFactory(client, 0)
	services := factory.Core().V1().Services().Informer()
	update := func(obj any) {
		if svc, ok := obj.(*corev1.Service); ok {
			t.table.set(svc.Namespace+"/"+svc.Name, pairsOf(svc, opts.annotation))
		}
	}
	_, err = services.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    update,
		UpdateFunc: func(_, obj any) { update(obj) },
		DeleteFunc: func(obj any) {
			if gone, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = gone.Obj
			}
			if svc, ok := obj.(*corev1.Service); ok {
				t.table.set(svc.Namespace+"/"+svc.Name, nil)
			}
		},
	})
	if err != nil {
		return plugin.Error(pluginName, err)
	}
	t.synced = services.HasSynced
	stop := make(chan struct{})
	c.OnStartup(func() error {
		log.Infof("watching Services for annotation %s", opts.annotation)
		factory.Start(stop)
		return nil
	})
	c.OnShutdown(func() error {
		close(stop)
		factory.Shutdown()
		return nil
	})
	dnsserver.GetConfig(c).AddPlugin(func(next plugin.Handler) plugin.Handler {
		t.Next = next
		return t
	})
	return nil
}
