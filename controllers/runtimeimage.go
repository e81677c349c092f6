package controllers

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// ManagerContainer is the name of the operator's container in its Deployment.
const ManagerContainer = "manager"

// RuntimeImage decides the default tradingd image (a stack's spec.runtime.image when
// empty): the image built with the operator, which holds both binaries. In order:
// explicit (--runtime-image, RUNTIME_IMAGE) when set; else, in a pod (podNamespace and
// podName from the downward API), the image of the pod's own manager container, whatever
// tag `make deploy IMG=...` or a harness gave it; else built, the image the build stamped
// into the binary (-ldflags), which a plain `docker build -t X .` cannot know.
func RuntimeImage(ctx context.Context, r client.Reader, explicit, podNamespace, podName, built string) (string, error) {
	if explicit != "" {
		return explicit, nil
	}
	if podNamespace == "" || podName == "" {
		return built, nil
	}
	pod := &corev1.Pod{}
	if err := r.Get(ctx, client.ObjectKey{Namespace: podNamespace, Name: podName}, pod); err != nil {
		return "", fmt.Errorf("read the operator's own pod %s/%s for its image (set RUNTIME_IMAGE to skip): %w", podNamespace, podName, err)
	}
	for _, c := range pod.Spec.Containers {
		if c.Name == ManagerContainer {
			return c.Image, nil
		}
	}
	return "", fmt.Errorf("the operator's pod %s/%s has no container named %q (set RUNTIME_IMAGE)", podNamespace, podName, ManagerContainer)
}
