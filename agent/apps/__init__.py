"""Apps: Rio's workflow (run, stage, promote gradually, weight, scale) on what k3s ships.

Each app is plain Kubernetes objects, and its state is in their labels and annotations:

- per revision: a Deployment, a Service, and with a CPU range a HorizontalPodAutoscaler (a range on
  requests is scaled by the controller, and one from 0 sleeps behind an EndpointSlice that points
  at the controller's holding endpoint);
- per app: a Traefik ``TraefikService`` holding the revisions' weights (and, in annotations, the
  weights a promotion is heading for, its increment and interval and its progress), and an
  ``IngressRoute`` sending the app's host to it and each revision's preview host to its Service.

``spec`` parses what a user gives (the CLI, config.yaml's ``apps:``), ``resources`` builds the
objects, ``rollout`` is the controller's pure weight stepping (and ``judge``, a promotion's traffic
against its bounds), ``metrics`` reads Traefik's counters, ``autoscale`` the replicas on requests,
``activator`` the holding endpoint that wakes a sleeping revision, ``commands`` what each ``basalt
app`` command changes, ``kube`` a small API client, ``controller`` the loop. Standard library and PyYAML
only: the same code runs on the node, in the controller's image and on a workstation.
"""
