# The pipeline's image: worker, beat, Flower and the one-shot init all run from it.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    STACK_DIR=/tmp

WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

COPY celeryconfig.py flowerconfig.py init.sql ./
COPY tasks/ tasks/
COPY data/ data/

RUN useradd --system --uid 10001 --no-create-home pipeline
USER 10001

EXPOSE 5555
CMD ["celery", "-A", "tasks", "worker", "--loglevel=INFO", "-Q", "fetch,batches"]
