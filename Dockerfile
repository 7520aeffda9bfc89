# Production image: the same gunicorn command as the Procfile, as a non-root user.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PORT=8000

WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt \
 && groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --home-dir /nonexistent --shell /usr/sbin/nologin app

# Everything the service reads at run time (tests/test_dockerfile.py runs it from these alone).
COPY public_service.py wsgi.py gunicorn.conf.py board.html board.js board.css public-status.js Procfile ./

USER 10001:10001
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000'), timeout=2)"]

# Run the Procfile's `web:` command itself, so the two can never drift apart;
# `exec` makes gunicorn PID 1's replacement, so `docker stop` (SIGTERM) reaches it.
CMD ["sh", "-c", "eval exec $(sed -n 's/^web: //p' Procfile)"]
