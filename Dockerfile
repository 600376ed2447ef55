FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    POSTROOM_DATA_DIR=/data

WORKDIR /srv/postroom
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY migrations ./migrations
RUN pip install --no-cache-dir -e . \
    && useradd --system --uid 10001 --home-dir /data postroom \
    && mkdir -p /data && chown postroom /data

USER postroom
VOLUME ["/data"]
EXPOSE 8000
CMD ["postroom", "serve", "--host", "0.0.0.0", "--port", "8000"]
