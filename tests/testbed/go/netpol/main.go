// The NetworkPolicy enforcement of the testbed's nodes: kube-network-policies' controller
// (sigs.k8s.io/kube-network-policies, pinned in go.mod), run as one host process per node. Upstream's
// own main is a DaemonSet's (in-cluster credentials, one instance per host, one nftables table); the
// testbed's nodes share one host, so each instance gets a kubeconfig and a table and nfqueue of its
// own, and filters the traffic of its node's pods only.
package main

import (
	"context"
	"flag"
	"os"
	"os/signal"
	"syscall"

	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	"sigs.k8s.io/kube-network-policies/pkg/networkpolicy"
)

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig of the controller's identity")
	node := flag.String("node", "", "the node whose pods this instance guards")
	table := flag.String("nftables-table", "", "the nftables table of this instance")
	queue := flag.Int("nfqueue-id", 100, "the nfqueue of this instance")
	klog.InitFlags(nil)
	flag.Parse()

	config, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		klog.Fatalf("kubeconfig: %v", err)
	}
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		klog.Fatalf("client: %v", err)
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()

	factory := informers.NewSharedInformerFactory(client, 0)
	controller, err := networkpolicy.NewController(client,
		factory.Networking().V1().NetworkPolicies(), factory.Core().V1().Namespaces(), factory.Core().V1().Pods(),
		nil, nil, nil, nil,
		networkpolicy.Config{NodeName: *node, NFTableName: *table, QueueID: *queue, NRIdisabled: true})
	if err != nil {
		klog.Fatalf("controller: %v", err)
	}
	go func() {
		if err := controller.Run(ctx); err != nil {
			klog.Errorf("controller: %v", err)
			cancel()
		}
	}()
	factory.Start(ctx.Done())
	<-ctx.Done()
}
