"""Publishing: choosing the artifact a device can run, signing manifests, serving chunks."""
