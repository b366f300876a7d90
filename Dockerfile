# The MetaPolicy operator image: `docker build -t ghcr.io/metapolicy/operator:0.1.0 .`
# (a placeholder name: push to your own registry and set it in manifests/deployment.yaml).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# torch first, from the CPU-only index: the package's plain `torch>=2.4` would pull a
# multi-GB CUDA build from PyPI. Same pin as the Makefile.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

# Only what the package build needs (.dockerignore keeps the rest out of the context).
WORKDIR /src
COPY pyproject.toml README.md ./
COPY model model
COPY operator operator
# operator/metapolicy_operator/crd/metapolicy.yaml links here: the package ships the CRD
COPY crds crds
RUN pip install . && rm -rf /src

# Non-root, numeric (so runAsNonRoot can check it); the Deployment also runs it with a
# read-only root filesystem and a writable /tmp.
USER 65532:65532
ENV HOME=/tmp
WORKDIR /tmp
EXPOSE 8080
ENTRYPOINT ["metapolicy", "run"]
