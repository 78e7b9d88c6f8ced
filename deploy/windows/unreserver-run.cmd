@echo off
rem unreserver run, as the task of unreserver-run.xml starts it. Keep this file readable by
rem administrators and LOCAL SERVICE only: it holds the database password.
set DATABASE_URL=postgres://unreserver:CHANGE-ME@db.internal:5432/shop?sslmode=require
set TIME_BUDGET_SECONDS=240
set RUN_INTERVAL_SECONDS=300
rem windows_exporter's textfile collector directory (its default):
set TEXTFILE_PATH=C:\Program Files\windows_exporter\textfile_inputs\unreserver.prom
C:\unreserver\unreserver.exe run >> C:\unreserver\last-run.json 2>> C:\unreserver\unreserver.log
