# sparkforge builder: the CUDA 13 toolchain every recipe builds in.
#
# BASE_IMAGE defaults to NVIDIA's CUDA 13.0 devel image for Ubuntu 24.04; the
# digest it resolves to is recorded in lock.toml ([builder]) and builds refuse an
# unpinned base unless told otherwise. Any base that provides CUDA at
# /usr/local/cuda and apt-get works too (the tests use a Debian stand-in made
# from PyPI's nvidia-* wheels, since no registry is reachable there).
ARG BASE_IMAGE=nvidia/cuda:13.0.1-devel-ubuntu24.04
FROM ${BASE_IMAGE}

# Extra CUDA libraries from NVIDIA's apt repository (configured in the nvidia/cuda
# images): cuDNN 9 and NCCL for CUDA 13. Empty on a base without that repository.
ARG CUDA_APT_PACKAGES="libcudnn9-dev-cuda-13 libnccl-dev"

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# DL3008: versions are not pinned per package here; the base image is pinned by
# digest and every build records the resolved toolchain versions in provenance.
# hadolint ignore=DL3008
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      build-essential ca-certificates ccache git libopenblas-dev ninja-build patch patchelf \
      python3 python3-dev python3-venv ${CUDA_APT_PACKAGES} \
 && rm -rf /var/lib/apt/lists/*

# The pipeline's own tools inside the image (auditwheel repairs wheels only for
# the machine it runs on, so aarch64 wheels are repaired in here): pinned with
# hashes in builder-tools.txt and staged by sparkforge in the build context, so
# this step needs no index.
COPY tools-wheels/ /tmp/tools-wheels/
RUN python3 -m venv /opt/sparkforge-tools \
 && /opt/sparkforge-tools/bin/pip install --no-cache-dir --no-index --find-links /tmp/tools-wheels \
      --require-hashes -r /tmp/tools-wheels/requirements.txt \
 && rm -rf /tmp/tools-wheels

ENV CUDA_HOME=/usr/local/cuda \
    PATH=/usr/local/cuda/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8

# Builds run as the caller's uid/gid (docker/podman --user); this account exists
# for the default and for tools that look up a home directory.
RUN useradd --create-home --uid 1000 --shell /bin/bash builder \
 && nvcc --version && python3 --version
USER 1000:1000
WORKDIR /home/builder
