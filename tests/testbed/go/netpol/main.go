// NetworkPolicy enforcement for the testbed: kube-network-policies' controller
// (sigs.k8s.io/kube-network-policies, pinned in go.mod) behind a main of ours, one process for the
// host that both nodes share.
//
// Upstream's controller takes each new connection from an nfqueue and decides it by the policies of
// its source and destination pods, whichever node they run on. Its own main is a DaemonSet's, and
// it queues packets with nftables' `queue` expression, which this machine's kernel lacks
// (CONFIG_NFT_QUEUE is not set: "Could not process rule: No such file or directory"); the xtables
// NFQUEUE target is built in. So this main queues new connections to and from the pod network with
// an iptables rule (removed on exit), and runs upstream's controller on a kubeconfig; upstream's own
// nftables rules then fail to load and are retried in the background, which changes nothing.
package main

import (
	"context"
	"flag"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"syscall"

	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	"sigs.k8s.io/kube-network-policies/pkg/networkpolicy"
)

const comment = "hpo-testbed: NetworkPolicy enforcement"

// queueRules are the iptables rules (in mangle POSTROUTING: after DNAT, before masquerading) that
// hand the first packet of every connection from or to a pod to the controller. Connections from
// the host itself are not queued: traffic between a node and its pods (the kubelet's probes) is
// always allowed, as NetworkPolicy specifies.
func queueRules(podCIDR string, queue int) [][]string {
	var rules [][]string
	for _, direction := range []string{"-s", "-d"} {
		rules = append(rules, []string{"POSTROUTING", direction, podCIDR, "-m", "addrtype", "!", "--src-type", "LOCAL",
			"-m", "conntrack", "!", "--ctstate", "ESTABLISHED,RELATED", "-m", "comment", "--comment", comment,
			"-j", "NFQUEUE", "--queue-num", strconv.Itoa(queue)})
	}
	return rules
}

func iptables(action string, rule []string) error {
	return exec.Command("iptables", append([]string{"-t", "mangle", action}, rule...)...).Run()
}

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig of the controller's identity")
	podCIDR := flag.String("pod-cidr", "", "the pods' addresses, on every node")
	queue := flag.Int("nfqueue-id", 100, "the nfqueue the controller reads")
	node := flag.String("node", "", "a node name (upstream's nftables rules, which fail here, use it)")
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
		// NRI stays "enabled": upstream's pod lookup calls the NRI plugin object for an address it does
		// not know (the host's) and would dereference nil without one. The nodes' containerds run no
		// NRI, so the plugin finds no socket, says so once and answers nothing.
		networkpolicy.Config{NodeName: *node, QueueID: *queue, NFTableName: "hpo-netpol"})
	if err != nil {
		klog.Fatalf("controller: %v", err)
	}
	rules := queueRules(*podCIDR, *queue)
	for _, rule := range rules {
		if err := iptables("-I", rule); err != nil {
			klog.Fatalf("iptables -I %v: %v", rule, err)
		}
	}
	defer func() {
		for _, rule := range rules {
			_ = iptables("-D", rule)
		}
	}()
	factory.Start(ctx.Done())
	if err := controller.Run(ctx); err != nil {
		klog.Errorf("controller: %v", err)
	}
}
