# sparkforge builder: the CUDA 13 toolchain every recipe builds in.
#
# BASE_IMAGE defaults to NVIDIA's CUDA 13.0 devel image for Ubuntu 24.04; the
# digest it resolves to is recorded in lock.toml ([builder]) and builds refuse an
# unpinned base unless told otherwise. What that image already holds (the uid-1000
# `ubuntu` account, the held cuBLAS/NCCL packages, NVIDIA's apt repository, its
# entrypoint) is listed with sources in builder.toml and docs/containers.md; the
# stand-in base (tools/standin_base.py) reproduces it where no registry is reachable.
ARG BASE_IMAGE=nvidia/cuda:13.0.1-devel-ubuntu24.04
FROM ${BASE_IMAGE}

# The CUDA libraries builds compile against, pinned to the versions the wheels
# declare at run time (recipes' [runtime] requires; PyTorch 2.9's own pins for its
# CUDA 13.0 wheels): plans check these against each other (builder.toml [args]).
# An empty value leaves that library out (a base without NVIDIA's apt repository).
# The names are not NCCL_VERSION & co.: the base image sets ENV NCCL_VERSION, and an
# inherited ENV wins over an ARG of the same name in RUN.
#  - NCCL: the base image holds libnccl2/libnccl-dev (apt-mark hold) at its own
#    version; this replaces them on purpose (--allow-change-held-packages) and holds
#    them again. A runtime NCCL older than the build's would lack symbols.
#  - cuDNN: the base image has none (it is in the *-cudnn-* tags only); PyTorch
#    refuses a runtime cuDNN older than the one it was compiled against.
#  - cuSPARSELt is not here: it comes from NVIDIA's PyPI wheel (builder-tools.txt, below).
ARG BUILDER_NCCL_VERSION=2.27.7-1+cuda13.0
ARG BUILDER_CUDNN_VERSION=9.13.0.50-1

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# nlohmann-json3-dev is triton's JSON_SYSPATH (its offline build must not download it).
# DL3008: not pinned per package: the base image is pinned by digest, the CUDA
# libraries below are pinned, and every build records the toolchain in provenance.
# hadolint ignore=DL3008
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      build-essential ca-certificates ccache git libopenblas-dev ninja-build nlohmann-json3-dev \
      patch patchelf python3 python3-dev python3-venv \
 && rm -rf /var/lib/apt/lists/*

# DL3008: each package here is pinned, to a build argument's version (hadolint cannot
# see through the array).
# hadolint ignore=DL3008
RUN packages=() \
 && if [ -n "${BUILDER_NCCL_VERSION}" ]; then packages+=("libnccl2=${BUILDER_NCCL_VERSION}" "libnccl-dev=${BUILDER_NCCL_VERSION}"); fi \
 && if [ -n "${BUILDER_CUDNN_VERSION}" ]; then packages+=("libcudnn9-cuda-13=${BUILDER_CUDNN_VERSION}" \
      "libcudnn9-dev-cuda-13=${BUILDER_CUDNN_VERSION}" "libcudnn9-headers-cuda-13=${BUILDER_CUDNN_VERSION}"); fi \
 && if [ "${#packages[@]}" -gt 0 ]; then \
      apt-get update \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
           --allow-change-held-packages --allow-downgrades "${packages[@]}" \
      && apt-mark hold "${packages[@]%%=*}" \
      && rm -rf /var/lib/apt/lists/*; \
    fi

# The pipeline's own tools inside the image (auditwheel repairs wheels only for
# the machine it runs on, so aarch64 wheels are repaired in here): pinned with
# hashes in builder-tools.txt and staged by sparkforge in the build context, so
# this step needs no index.
COPY tools-wheels/ /tmp/tools-wheels/
# cuSPARSELt from that venv is linked where NVIDIA's libcusparselt0-dev-cuda-13 puts it
# (headers /usr/include/libcusparseLt/13, libraries /usr/lib/<multiarch>/libcusparseLt/13,
# outside the default search paths, hence ld.so.conf.d).
RUN python3 -m venv /opt/sparkforge-tools \
 && /opt/sparkforge-tools/bin/pip install --no-cache-dir --no-index --find-links /tmp/tools-wheels \
      --require-hashes -r /tmp/tools-wheels/requirements.txt \
 && rm -rf /tmp/tools-wheels \
 && lt="$(/opt/sparkforge-tools/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/nvidia/cusparselt" \
 && if [ -d "${lt}" ]; then \
      lib="/usr/lib/$(gcc -dumpmachine)/libcusparseLt/13" \
      && mkdir -p /usr/include/libcusparseLt/13 "${lib}" \
      && ln -s "${lt}/include/cusparseLt.h" /usr/include/libcusparseLt/13/cusparseLt.h \
      && ln -s "${lt}/lib/libcusparseLt.so.0" "${lib}/libcusparseLt.so.0" \
      && ln -s libcusparseLt.so.0 "${lib}/libcusparseLt.so" \
      && echo "${lib}" > /etc/ld.so.conf.d/sparkforge-cusparselt.conf \
      && ldconfig; \
    fi

ENV CUDA_HOME=/usr/local/cuda \
    PATH=/usr/local/cuda/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8

# Builds run as the caller's uid/gid (docker/podman --user). Ubuntu 24.04 images
# already have `ubuntu` at uid 1000; a base without a uid-1000 account gets `builder`.
# NVIDIA's entrypoint prints a banner to stdout before every command: none here.
RUN if ! getent passwd 1000 > /dev/null; then \
      useradd --create-home --uid 1000 --shell /bin/bash builder; \
    fi \
 && nvcc --version && python3 --version
ENTRYPOINT []
USER 1000:1000
WORKDIR /tmp
