@echo off
rem Registers the task of unreserver-run.xml (run as an administrator, from this folder):
schtasks /Create /TN "\unreserver\run" /XML unreserver-run.xml /F
rem Without the XML, the same schedule in one line (then set "Do not start a new instance"
rem and "Stop the task if it runs longer than 5 minutes" in its settings):
rem schtasks /Create /TN "\unreserver\run" /TR "C:\unreserver\unreserver-run.cmd" /SC MINUTE /MO 5 /RU "NT AUTHORITY\LOCAL SERVICE" /F
