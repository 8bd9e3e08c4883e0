"""jaxbatmobile benchmarks: our kernels against the peers, same process, same inputs."""
